"""MovieLens click-through prediction: FM and DeepFM, optimizers compared."""
