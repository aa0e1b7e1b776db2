"""Training of the default model (`train.py`) and its architecture (`models.py`)."""
