"""Built-in sources and sinks."""

from streamjob.connectors.discard import DiscardSink
from streamjob.connectors.files import FileSource
from streamjob.connectors.filesink import FileSink
from streamjob.connectors.generator import GeneratorSource
from streamjob.connectors.kafkasink import KafkaSink
from streamjob.connectors.kafkasource import KafkaSource
from streamjob.connectors.printsink import PrintSink

__all__ = ["DiscardSink", "FileSink", "FileSource", "GeneratorSource", "KafkaSink", "KafkaSource",
           "PrintSink"]
