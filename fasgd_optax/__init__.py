"""fasgd_optax: frequency-aware SGD (FA-SGD, CF-SGD) for embedding tables in Optax."""

from fasgd_optax._src.alias import cf_sgd
from fasgd_optax._src.alias import fa_sgd
from fasgd_optax._src.frequencies import count_ids
from fasgd_optax._src.frequencies import frequencies_from_counts
from fasgd_optax._src.rowwise_adagrad import rowwise_adagrad
from fasgd_optax._src.rowwise_adagrad import scale_by_rowwise_adagrad
from fasgd_optax._src.rowwise_adagrad import ScaleByRowwiseAdagradState
from fasgd_optax._src.rows import resolve_duplicates
from fasgd_optax._src.sparse import sparse_cf_sgd
from fasgd_optax._src.sparse import sparse_fa_sgd
from fasgd_optax._src.sparse import sparse_rowwise_adagrad
from fasgd_optax._src.sparse import sparse_sgd
from fasgd_optax._src.sparse_apply import SparseTransformation
from fasgd_optax._src.transform import scale_by_counted_frequency
from fasgd_optax._src.transform import scale_by_known_frequency
from fasgd_optax._src.transform import ScaleByCountedFrequencyState
from fasgd_optax._src.transform import ScaleByKnownFrequencyState

__version__ = '0.1.0'

__all__ = (
    'cf_sgd',
    'count_ids',
    'fa_sgd',
    'frequencies_from_counts',
    'resolve_duplicates',
    'rowwise_adagrad',
    'scale_by_rowwise_adagrad',
    'ScaleByRowwiseAdagradState',
    'sparse_cf_sgd',
    'sparse_fa_sgd',
    'sparse_rowwise_adagrad',
    'sparse_sgd',
    'SparseTransformation',
    'scale_by_counted_frequency',
    'scale_by_known_frequency',
    'ScaleByCountedFrequencyState',
    'ScaleByKnownFrequencyState',
)
