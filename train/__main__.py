"""`python -m larq_nobn.train`: the training program (see `main.py`)."""

from larq_nobn.train.commands import train

train()
