"""streamjob: stream-processing jobs with barrier-aligned checkpoints."""

from streamjob.pipeline import Pipeline

__all__ = ["Pipeline"]
__version__ = "0.1.0"
