# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""quote() and join(): an argv becomes a POSIX shell command line that gives the program exactly these words, checked
by real shells (dash, bash; busybox ash when it is installed)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import shutil
import subprocess

import pytest

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import InvalidInputError
from ansible_collections.dfir.vmcollect.plugins.module_utils._ssh.client import command_line, join, quote

AWKWARD = [
    "/vmfs/volumes/datastore1/Win Srv [prod] 01/Win Srv [prod] 01.vmdk",
    "[datastore1] Windows XP/Windows XP.vmx",
    "it's",
    "''",
    "'",
    "a'b'c",
    '"double" quotes',
    "$HOME and ${PATH} and $(id) and $((1+1))",
    "`id`",
    "back\\slash\\",
    "new\nline\n",
    "tab\there",
    "*.vmdk ? [a-z]",
    "~root",
    "-n",
    "--secret=x;y&z|w",
    "a=b",
    "!history #comment",
    "Ünïcödé 日本語 ✓",
    " leading and trailing ",
    "",
    "{a,b}",
    "%s%d",
]

SHELLS = [s for s in ("/bin/sh", shutil.which("dash"), shutil.which("bash")) if s]
if shutil.which("busybox"):
    SHELLS.append(shutil.which("busybox") + " ash")


@pytest.mark.parametrize("word, quoted", [
    ("vmkfstools", "vmkfstools"),
    ("/vmfs/volumes/datastore1/vm/vm.vmdk", "/vmfs/volumes/datastore1/vm/vm.vmdk"),
    ("-d", "-d"),
    ("thin", "thin"),
    ("user@host:22,x+y%", "user@host:22,x+y%"),
    ("", "''"),
    ("a b", "'a b'"),
    ("it's", "'it'\\''s'"),
    ("'", "''\\'''"),
    ("a=b", "'a=b'"),
    ("~", "'~'"),
    ("$x", "'$x'"),
    ("`x`", "'`x`'"),
    ("a\nb", "'a\nb'"),
    ("ü", "'ü'"),
    ("[x]", "'[x]'"),
])
def test_quote(word, quoted):
    assert quote(word) == quoted


@pytest.mark.parametrize("shell", SHELLS)
def test_every_awkward_word_arrives_exactly(shell):
    line = "printf '%s\\0' " + join(AWKWARD)
    out = subprocess.run(shell.split() + ["-c", line], check=True, stdout=subprocess.PIPE, timeout=10).stdout
    assert out.split(b"\0")[:-1] == [w.encode("utf-8") for w in AWKWARD]


def test_bytes_are_taken_as_utf8_and_undecodable_bytes_are_kept():
    raw = b"caf\xc3\xa9 \xff\xfe.vmdk"
    line = "printf '%s' " + join([raw])
    out = subprocess.run(["/bin/sh", "-c", line.encode("utf-8", "surrogateescape")], check=True,
                         stdout=subprocess.PIPE, timeout=10).stdout
    assert out == raw


def test_nul_and_non_strings_are_refused_without_showing_the_value():
    with pytest.raises(InvalidInputError, match="NUL character") as caught:
        quote("secret\0value")
    assert "secret" not in caught.value.message
    with pytest.raises(InvalidInputError, match="must be a string, not int"):
        quote(42)
    with pytest.raises(InvalidInputError, match="argv is empty"):
        join([])
    with pytest.raises(InvalidInputError, match="must be a list of strings, not str"):
        join("ls -l")


def test_command_line_takes_argv_or_a_command_line_as_it_is():
    assert command_line(["ls", "-l", "Win Srv [prod] 01"]) == "ls -l 'Win Srv [prod] 01'"
    assert command_line(("vim-cmd", "vmsvc/getallvms")) == "vim-cmd vmsvc/getallvms"
    assert command_line("esxcli storage filesystem list | grep VMFS") == "esxcli storage filesystem list | grep VMFS"
    with pytest.raises(InvalidInputError, match="The command is empty"):
        command_line("  ")
