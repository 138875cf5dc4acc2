"""`python -m larq_nobn.train`: the training program (see `main.py`)."""

from larq_nobn.train.main import run

run()
