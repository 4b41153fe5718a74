import pytest

from streamjob import Pipeline
from streamjob.connectors import GeneratorSource, PrintSink
from streamjob.pipeline import PipelineError


def test_tasks_split_at_exchanges():
    p = Pipeline()
    (p.source(GeneratorSource(10)).map(str).key_by(str).count().map(str).rebalance().map(str)
      .sink(PrintSink()))
    p.validate()
    assert [t["input"] for t in p.describe()] == ["source", "keyed", "rebalance"]


def test_key_by_must_be_followed_by_keyed_processing():
    p = Pipeline()
    keyed = p.source(GeneratorSource(10)).key_by(str)
    assert not hasattr(keyed, "map")  # a keyed stream only offers keyed processing
    with pytest.raises(PipelineError, match="goes nowhere"):
        p.validate()


def test_a_pipeline_needs_a_sink():
    p = Pipeline()
    p.source(GeneratorSource(10)).map(str)
    with pytest.raises(PipelineError, match="sink"):
        p.validate()
