# -*- coding: utf-8 -*-
# Copyright: multiwan.linux contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection plugin that runs everything inside another process's namespaces via nsenter."""

from __future__ import annotations

DOCUMENTATION = r"""
name: nsenter
short_description: Run tasks inside the network and mount namespaces of a running process
description:
  - Executes commands and transfers files inside the namespaces of a long-lived "anchor" process
    on the controller machine, using C(nsenter --target PID --net --mount).
  - Made for the multiwan.linux lab, where each lab gateway is a network namespace plus a mount
    namespace whose C(/etc), C(/var) and C(/root) are overlays. Files Ansible writes land in that
    gateway's own view, never in the controller's real C(/etc). Admins can use it to rehearse a
    rollout on the lab before touching real gateways.
  - File transfer streams the file through C(nsenter) into the target view, so write-then-rename
    by modules works inside the namespace.
  - The controller must run as root (nsenter needs CAP_SYS_ADMIN). Privilege escalation is not
    needed and not supported.
author: multiwan.linux maintainers (@multiwan)
version_added: 0.1.0
options:
  pid:
    description:
      - PID of the anchor process whose namespaces are entered.
      - One of O(pid) or O(pidfile) is required.
    type: int
    vars:
      - name: multiwan_nsenter_pid
  pidfile:
    description:
      - File on the controller holding the anchor PID (the lab writes C(/run/mwlab/LAB/SITE.gw.pid)).
      - Read again for every connection, so a restarted lab is found.
    type: path
    vars:
      - name: multiwan_nsenter_pidfile
  namespaces:
    description:
      - Namespaces to enter, as nsenter long options without dashes.
    type: list
    elements: str
    default: [net, mount]
    vars:
      - name: multiwan_nsenter_namespaces
  nsenter_path:
    description: Name or path of the nsenter binary on the controller (searched in E(PATH)).
    type: str
    default: nsenter
    vars:
      - name: multiwan_nsenter_path
extends_documentation_fragment:
  - connection_pipelining
notes:
  - O(namespaces) entries must be among C(net), C(mount), C(uts), C(ipc), C(pid), C(cgroup).
  - For a lab gateway in systemd mode (Debian booted under systemd-nspawn) the lab's inventory sets
    the pidfile to the container's init and O(namespaces) to C([net, mount, pid, uts, ipc]), so
    C(systemctl) and the container's own C(/usr/bin/python3) are used.
"""

import os
import shlex
import shutil
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

_ALLOWED_NAMESPACES = ("net", "mount", "uts", "ipc", "pid", "cgroup")
_CHUNK = 64 * 1024


class Connection(ConnectionBase):
    """Run commands through nsenter in the namespaces of an anchor process."""

    transport = "multiwan.linux.nsenter"
    has_pipelining = True
    default_user = "root"

    def __init__(self, *args, **kwargs):
        super(Connection, self).__init__(*args, **kwargs)
        self._target_pid = None

    def _anchor_pid(self):
        pid = self.get_option("pid")
        pidfile = self.get_option("pidfile")
        if pid is None and pidfile:
            try:
                with open(pidfile) as handle:
                    pid = int(handle.read().split()[0])
            except (OSError, ValueError, IndexError) as exc:
                raise AnsibleConnectionFailure("nsenter: cannot read anchor pid from %s: %s" % (pidfile, exc))
        if pid is None:
            raise AnsibleConnectionFailure("nsenter: set multiwan_nsenter_pid or multiwan_nsenter_pidfile")
        if not os.path.exists("/proc/%d/ns/net" % pid):
            raise AnsibleConnectionFailure("nsenter: anchor process %d is not running" % pid)
        return pid

    def _nsenter_argv(self):
        namespaces = self.get_option("namespaces")
        bad = [name for name in namespaces if name not in _ALLOWED_NAMESPACES]
        if bad:
            raise AnsibleError("nsenter: unsupported namespaces %s (allowed: %s)" % (bad, ", ".join(_ALLOWED_NAMESPACES)))
        binary = shutil.which(self.get_option("nsenter_path")) or self.get_option("nsenter_path")
        return [binary, "--target", str(self._target_pid)] + ["--%s" % name for name in namespaces] + ["--"]

    def _connect(self):
        if not self._connected:
            self._target_pid = self._anchor_pid()
            display.vvv("ESTABLISH NSENTER CONNECTION TO PID %d" % self._target_pid, host=self._play_context.remote_addr)
            self._connected = True
        return self

    def _run(self, argv, in_data=None, stdin=subprocess.PIPE, stdout=subprocess.PIPE):
        proc = subprocess.Popen(self._nsenter_argv() + argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
        out, err = proc.communicate(in_data)
        return proc.returncode, out, err

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super(Connection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        display.vvv("EXEC %s" % to_text(cmd), host=self._play_context.remote_addr)
        return self._run(["/bin/sh", "-c", to_text(cmd)], in_data=in_data)

    def put_file(self, in_path, out_path):
        super(Connection, self).put_file(in_path, out_path)
        display.vvv("PUT %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound("file or module does not exist: %s" % in_path)
        with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as source:
            script = "cat > %s" % shlex.quote(out_path)
            rc, dummy, err = self._run(["/bin/sh", "-c", script], stdin=source)
        if rc != 0:
            raise AnsibleError("failed to transfer file to %s: %s" % (out_path, to_text(err)))

    def fetch_file(self, in_path, out_path):
        super(Connection, self).fetch_file(in_path, out_path)
        display.vvv("FETCH %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as target:
            rc, dummy, err = self._run(["/bin/cat", "--", in_path], stdout=target)
        if rc != 0:
            raise AnsibleError("failed to fetch file %s: %s" % (in_path, to_text(err)))

    def close(self):
        self._connected = False
