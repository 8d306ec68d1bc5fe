"""docs/settings.md, generated from :class:`pipeline.settings.Settings` so that the two stay in step.

    .venv/bin/python -m pipeline.settings_doc > docs/settings.md

``tests/test_settings.py`` fails while the file differs from what this prints.
"""

from __future__ import annotations

import sys

from pipeline.settings import settings_table

COMMAND = ".venv/bin/python -m pipeline.settings_doc > docs/settings.md"

_INTRO = """# Settings

<!-- Generated from pipeline/settings.py by `{command}`; edit there, not here. -->

Every setting is an `args:` key of the `product_cutout` application in `serve_config.yaml`,
and can be overridden by the environment variable `CUTOUT_<NAME>` (lists are comma-separated).
A `CUTOUT_` variable that names no setting is reported in the log rather than silently ignored.
All values are validated when the application is built; a bad value stops the deploy with a
message naming every bad setting at once. `cutout settings --check` validates the current
ones (`serve_config.yaml` and the environment), `cutout settings` prints the table below.

"""

_OUTRO = """
Deployment-level knobs (replicas, `max_ongoing_requests`, CPUs and GPUs per replica) are in the
`deployments:` section of `serve_config.yaml`, one entry per stage. The moderation policy can
also change live through the Moderator's `user_config` (`block`, `threshold`) without reloading
the model.
"""


def settings_document() -> str:
    """The whole of docs/settings.md."""
    return _INTRO.format(command=COMMAND) + settings_table() + "\n" + _OUTRO


if __name__ == "__main__":
    sys.stdout.write(settings_document())
