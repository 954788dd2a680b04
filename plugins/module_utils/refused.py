# -*- coding: utf-8 -*-
# Copyright: quorum.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception a step raises when it refuses or fails with a message that is complete:
it names the input or the file at fault and says what was (not) changed. A module fails with it
as it is: fail_json(msg=str(exc), **exc.details)."""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A refusal or failure whose message is complete; `details` go into the failed result."""

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.details = details
