"""datadir_archive.unused_path: where something is moved or kept aside, never onto what is there."""
from __future__ import annotations

import os

from ansible_collections.quorum.recovery.plugins.module_utils import datadir_archive as arch


def test_the_base_when_free_then_the_first_free_numbered_name(tmp_path):
    base = str(tmp_path / "member.replaced-r1")
    assert arch.unused_path(base) == base
    os.mkdir(base)
    assert arch.unused_path(base) == base + "-2"
    os.mkdir(base + "-2")
    os.symlink(str(tmp_path / "gone"), base + "-3")  # a dangling link is something there too
    assert arch.unused_path(base) == base + "-4"
    assert arch.unused_path(base, "%s/again-%d") == base + "/again-2"
