"""The trainer with a setup that does not end (as a GPU machine loading a large base can take
minutes): tests/test_service.py shows a cancel and a shutdown do not wait for it."""

import time

from trainer.cog_model import Predictor as Trainer


class Predictor(Trainer):
    def setup(self) -> None:
        time.sleep(3600)
