"""The profiling room: stage timing (``timing``: below the pipeline, which records into a timer its
caller passes), FLOP counting (``flops``), the profiler that measures pipelines (``profiler``) and its
table, JSON and chart (``report``). Nothing is imported here: each module is imported by name."""
