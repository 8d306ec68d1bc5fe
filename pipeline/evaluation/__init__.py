"""Evaluation tooling, outside the service's runtime: samples with ground truth
(:mod:`.evalsets`), the metrics and the pipeline run on them (:mod:`.evaluate`), and the
``cutout eval`` command (:mod:`.cli`)."""
