"""MasqueradeManager planning and applying with captured nft JSON and files in a temporary /etc."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ansible_collections.multiwan.linux.plugins.module_utils import _nft
from ansible_collections.multiwan.linux.plugins.modules import nft_masquerade

FIXTURES = Path(__file__).resolve().parents[1] / "module_utils" / "fixtures" / "nft"
MISSING = (1, "", "Error: No such file or directory\nlist table ip multiwan\n")
DEBIAN_MAIN = "#!/usr/sbin/nft -f\n\nflush ruleset\n\ntable inet filter {\n}\n"


def listing(name):
    return (0, (FIXTURES / (name + ".json")).read_text(), "")


class Exited(Exception):
    def __init__(self, result):
        super(Exited, self).__init__(result)
        self.result = result


class FakeModule(object):
    def __init__(self, check_mode=False, diff=True):
        self.check_mode = check_mode
        self._diff = diff
        self.warnings = []
        self.moves = []

    def exit_json(self, **result):
        raise Exited(result)

    def warn(self, msg):
        self.warnings.append(msg)

    def atomic_move(self, src, dest):
        self.moves.append(dest)
        os.rename(src, dest)


class FakeRunner(object):
    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, argv, data=None):
        self.calls.append((argv[1:], data))
        return self.answers.pop(0)


def run(runner, desired, module=None, paths=(None, None)):
    module = module or FakeModule()
    manager = nft_masquerade.MasqueradeManager(module, _nft.Nft(runner), "ip", "multiwan", desired, *paths)
    with pytest.raises(Exited) as exited:
        manager.run()
    assert not runner.answers, "unused nft answers"
    return exited.value.result


def minimal():
    return _nft.masquerade_table("ip", "multiwan", [{"interface": "wan1"}])


def test_unchanged_table_runs_only_the_listing():
    runner = FakeRunner(listing("ip_minimal"))
    result = run(runner, minimal())
    assert result["changed"] is False and result["transaction"] == ""
    assert result["diff"] == [{"before": "", "after": ""}]
    assert runner.calls == [(["-j", "list", "table", "ip", "multiwan"], None)]


def test_drift_replaces_the_table_in_one_transaction_and_verifies():
    runner = FakeRunner(listing("ip_drift"), (0, "", ""), listing("ip_minimal"))
    result = run(runner, minimal())
    assert result["changed"] is True
    assert runner.calls[1] == (["-f", "-"], _nft.replace_table_script(minimal()))
    before, after = result["diff"][0]["before"], result["diff"][0]["after"]
    assert "set ip multiwan blocked" in before and "chain ip multiwan mangle_prerouting" in before
    assert 'meta oifname \\"wan2\\" masquerade' in before and "wan2" not in after


def test_readback_mismatch_warns():
    module = FakeModule()
    runner = FakeRunner(MISSING, (0, "", ""), listing("ip_drift"))
    run(runner, minimal(), module)
    assert module.warnings and "differs" in module.warnings[0]


def test_check_mode_lists_only():
    runner = FakeRunner(listing("ip_drift"))
    result = run(runner, minimal(), FakeModule(check_mode=True))
    assert result["changed"] is True and result["transaction"].startswith("table ip multiwan\ndelete table")
    assert len(runner.calls) == 1


def test_nft_rejection_is_an_error_naming_the_table():
    runner = FakeRunner(MISSING, (1, "", "Error: Could not process rule: Operation not supported\n"))
    with pytest.raises(_nft.NftError, match="table ip multiwan: Error: Could not process rule"):
        run(runner, minimal())


def test_persistence_written_in_order_and_removed_in_reverse(tmp_path):
    own, main = tmp_path / "nftables.d" / "ip-multiwan.nft", tmp_path / "nftables.conf"
    main.write_text(DEBIAN_MAIN)
    module = FakeModule()
    result = run(FakeRunner(MISSING, (0, "", ""), listing("ip_minimal")), minimal(), module, (str(own), str(main)))
    assert module.moves == [str(own), str(main)]  # the included file exists before the include
    assert own.read_text() == _nft.persist_file_text(minimal(), nft_masquerade.OWNER)
    assert main.read_text() == DEBIAN_MAIN + 'include "%s"  # managed by %s\n' % (own, nft_masquerade.OWNER)
    assert [entry["before_header"] for entry in result["diff"][1:]] == [str(own), str(main)]

    again = run(FakeRunner(listing("ip_minimal")), minimal(), FakeModule(), (str(own), str(main)))
    assert again["changed"] is False

    module = FakeModule()
    removed = run(FakeRunner(listing("ip_minimal"), (0, "", ""), MISSING), None, module, (str(own), str(main)))
    assert removed["changed"] is True and removed["transaction"] == "delete table ip multiwan\n"
    assert module.moves == [str(main)] and not own.exists()
    assert main.read_text() == DEBIAN_MAIN


def test_missing_main_config_is_created_with_the_include(tmp_path):
    own, main = tmp_path / "t.nft", tmp_path / "main.conf"
    run(FakeRunner(listing("ip_minimal")), minimal(), FakeModule(), (str(own), str(main)))
    assert main.read_text() == '#!/usr/sbin/nft -f\ninclude "%s"  # managed by %s\n' % (own, nft_masquerade.OWNER)
