"""Test-only callback: write each host's full task result, with its outcome, to a JSON file.

The tree callback of ansible-core drops ``failed`` (2.21) and ``diff`` (below verbosity 3), which
the lab tests need; this one writes the result as the module returned it plus ``failed`` /
``unreachable`` / ``skipped`` set from the callback that fired.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: result_file
type: aggregate
short_description: write each host's result to MULTIWAN_RESULT_DIR/HOST (tests only)
description: [Writes the full result of the last task of each host as JSON.]
requirements: [enabled in callbacks_enabled]
"""

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "result_file"
    CALLBACK_NEEDS_ENABLED = True

    def _write(self, result, **outcome):
        directory = os.environ.get("MULTIWAN_RESULT_DIR")
        if not directory:
            return
        data = getattr(result, "result", None)
        if data is None:
            data = result._result  # pylint: disable=protected-access
        data = dict(data)
        data.update(outcome)
        host = result._host.get_name()  # pylint: disable=protected-access
        with open(os.path.join(directory, host), "w") as handle:
            json.dump(data, handle, default=str)

    def v2_runner_on_ok(self, result, **kwargs):
        self._write(result, failed=False)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._write(result, failed=True)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._write(result, failed=True, unreachable=True)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._write(result, failed=False, skipped=True)
