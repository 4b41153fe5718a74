"""PyFlink DataStream API job with Python functions (what a Python user writes).

Run by ``run.py`` inside the PyFlink virtual environment. Results are the same text lines the
other systems write (``<word> <count>`` per update for the count job, ``<window_start_ms>
<word> <sum>`` per closed window for the window job), written into ``--output`` by Flink's
``FileSink`` in row format (Java's buffered writer, a line per record; part files finished at
each checkpoint and at the end of input); ``run.py`` parses and checks the finished
``part-*`` files. Flink's ``print()`` sink is not used: it makes one ``write(2)`` per record,
while every other system here buffers its output.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gen  # noqa: E402


def main() -> None:
    ap = gen.flink_arguments()
    ap.add_argument("--mode", choices=["thread", "process"], default="thread",
                    help="python.execution-mode: thread runs the Python functions inside the "
                         "JVM (PEMJA, ~10x faster here); process in Beam worker processes")
    ap.add_argument("--output", default="out")
    a = ap.parse_args()

    from pyflink.common import Configuration, Duration, Encoder, Types, WatermarkStrategy
    from pyflink.common.time import Time
    from pyflink.common.watermark_strategy import TimestampAssigner
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.datastream.connectors.file_system import (
        BucketAssigner,
        FileSink,
        OutputFileConfig,
        RollingPolicy,
    )
    from pyflink.datastream.connectors.number_seq import NumberSequenceSource
    from pyflink.datastream.functions import ProcessWindowFunction
    from pyflink.datastream.window import TumblingEventTimeWindows

    conf = Configuration()
    conf.set_string("python.execution-mode", a.mode)
    conf.set_string("restart-strategy.type", "fixed-delay")
    conf.set_string("restart-strategy.fixed-delay.attempts", "5")
    conf.set_string("restart-strategy.fixed-delay.delay", "1 s")
    if a.checkpoint_ms:
        conf.set_string("execution.checkpointing.interval", f"{a.checkpoint_ms} ms")
        conf.set_string("execution.checkpointing.dir",
                        "file://" + os.path.abspath(a.checkpoint_dir))
        conf.set_string("state.backend.type", "hashmap")
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(a.parallelism)
    env.set_python_executable(sys.executable)

    # Part files straight in --output (no date-time bucket folders), named part-<uid>-<n>;
    # in-progress and pending files are hidden (".part-..."), so a reader sees finished ones.
    # A part file rolls at every checkpoint (and at the end of input) and is finished when
    # the checkpoint completes, as ours is; the default policy would hold it open for 60 s.
    sink = (FileSink.for_row_format("file://" + os.path.abspath(a.output),
                                    Encoder.simple_string_encoder())
            .with_bucket_assigner(BucketAssigner.base_path_bucket_assigner())
            .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
            .with_output_file_config(OutputFileConfig.builder().with_part_prefix("part")
                                     .build())
            .build())
    words, eps = a.words, a.eps
    seq = env.from_source(NumberSequenceSource(0, a.records - 1),
                          WatermarkStrategy.no_watermarks(), "records")
    if a.job == "count":
        def to_word(g):
            return (f"w{((g * 2654435761) & 0xFFFFFFFF) % words}", 1)

        (seq.map(to_word, output_type=Types.TUPLE([Types.STRING(), Types.LONG()]))
            .key_by(lambda r: r[0], key_type=Types.STRING())
            .reduce(lambda x, y: (x[0], x[1] + y[1]))
            .map(lambda r: f"{r[0]} {r[1]}", output_type=Types.STRING())
            .sink_to(sink))
    else:
        def to_event(g):
            return (f"w{((g * 2654435761) & 0xFFFFFFFF) % words}", g % 100, g * 1000 // eps)

        class EventTime(TimestampAssigner):
            def extract_timestamp(self, value, record_timestamp):
                return value[2]

        class Emit(ProcessWindowFunction):
            def process(self, key, context, elements):
                for e in elements:
                    yield f"{context.window().start} {key} {e[1]}"

        strategy = (WatermarkStrategy
                    .for_bounded_out_of_orderness(Duration.of_millis(a.lateness_ms))
                    .with_timestamp_assigner(EventTime()))
        (seq.map(to_event,
                 output_type=Types.TUPLE([Types.STRING(), Types.LONG(), Types.LONG()]))
            .assign_timestamps_and_watermarks(strategy)
            .key_by(lambda r: r[0], key_type=Types.STRING())
            .window(TumblingEventTimeWindows.of(Time.seconds(1)))
            .reduce(lambda x, y: (x[0], x[1] + y[1], max(x[2], y[2])),
                    window_function=Emit(), output_type=Types.STRING())
            .sink_to(sink))
    assert gen.word(0, words) == "w0"
    job = env.execute(f"peers-{a.job}")
    # Submission to finish, without the JVM and gateway start-up: run.py's "job seconds".
    print(f"NET_RUNTIME_MS={job.get_net_runtime()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
