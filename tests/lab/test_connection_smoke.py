"""The nsenter connection plugin writes into the gateway's own view of /etc, not the host's."""

import os


def test_copy_lands_in_gateway_view_only(gateway):
    marker = "/etc/multiwan-test"
    assert not os.path.exists(marker), "a stale %s exists on the host" % marker
    result = gateway.run("ansible.builtin.copy", {"content": "lab\n", "dest": marker})
    assert result["changed"] is True
    assert gateway.read(marker) == "lab\n"
    assert not os.path.exists(marker)
    again = gateway.run("ansible.builtin.copy", {"content": "lab\n", "dest": marker})
    assert again["changed"] is False
