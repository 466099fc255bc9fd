# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Signatures of a case's records (manifest.json, SHA256SUMS, custody.jsonl, the report) with an examiner's SSH key.

Each record gets ``<record>.sig``, made by ``ssh-keygen -Y sign`` in the namespace ``NAMESPACE``; the case gets
``examiner.pub`` (the public key) and ``allowed_signers`` (one line: the examiner as principal, the namespace, the
key), so that ``ssh-keygen -Y verify`` alone verifies every record (``verify_command()`` is that shell line).

ssh-keygen never sees a terminal (it runs in a session of its own with stdin closed) and never an askpass program
(``SSH_ASKPASS_REQUIRE=never``): a key with a passphrase that no ssh-agent holds fails at once with a sentence, it
never waits for a prompt. A signature is made in a private temporary folder, checked against the file's current
bytes, then put beside the file atomically. The key's material never goes into argv, only its path.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import tempfile

from ansible_collections.dfir.vmcollect.plugins.module_utils._errors import (
    DestinationError, EvidenceSourceError, InvalidInputError, SignatureError, SigningError)
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.fsutil import write_atomic
from ansible_collections.dfir.vmcollect.plugins.module_utils._host.runner import NOT_STARTED_RC, TIMED_OUT_RC, run

# the namespace of every signature of this collection (ssh-keygen -n): a signature made for something else (a git
# commit, a file signed by hand in "file") does not verify as a case record, nor one of ours as anything else
NAMESPACE = "dfir.vmcollect@evidence"
SIG_SUFFIX = ".sig"
PUBLIC_KEY_NAME = "examiner.pub"
ALLOWED_SIGNERS_NAME = "allowed_signers"
# the records of a case that are signed, when present (the checksum file may be named otherwise)
RECORDS = ("manifest.json", "SHA256SUMS", "custody.jsonl", "report.html", "report.txt")
SSH_KEYGEN = "ssh-keygen"
DEFAULT_TIMEOUT = 60.0
FILE_MODE = 0o644
# no askpass program, ever: a passphrase that is needed and not in an agent is an error, not a window or a wait
_ENV = {"SSH_ASKPASS_REQUIRE": "never"}
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._+-]*$")
_KEY_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9@.-]*$")
_PRINCIPAL_MAX = 256
_SSH_KEYGEN_MISSING = ("ssh-keygen cannot be started (%s); install OpenSSH's client tools (the Debian and Ubuntu "
                       "package openssh-client, on RHEL openssh) where this runs.")
# ---- names -------------------------------------------------------------------------------------------------------


def principal_field(principal):
    """The principal as written in allowed_signers (quoted when it holds a space), after checking it.

    A principal names the examiner (an e-mail address, a name): printable text without double quotes, commas
    (allowed_signers separates principals with them), wildcards (``*``, ``?``) or a leading ``!`` or ``#``.
    """
    if not isinstance(principal, str) or not principal.strip():
        raise InvalidInputError("The principal (the examiner, e.g. an e-mail address) is empty; give one.")
    text = principal.strip()
    if "\n" in text or "\r" in text:
        raise InvalidInputError("The principal %r holds a line break; allowed_signers keeps one signer per line, so "
                                "give it on one line." % (principal,))
    if not text.isprintable():
        raise InvalidInputError("The principal %r holds a control character; give printable text." % (principal,))
    if len(text) > _PRINCIPAL_MAX:
        raise InvalidInputError("The principal is %d characters long; give at most %d." % (len(text), _PRINCIPAL_MAX))
    bad = sorted(set(c for c in text if c in '",*?'))
    if bad:
        raise InvalidInputError("The principal %r holds %s: in allowed_signers a comma separates principals, * and ? "
                                "are wildcards and a double quote ends a quoted name. Give the examiner's e-mail "
                                "address or name without them." % (text, " ".join(repr(c) for c in bad)))
    if text[0] in "!#":
        raise InvalidInputError("The principal %r starts with %r, which allowed_signers reads as a negation or a "
                                "comment; give the examiner's e-mail address or name." % (text, text[0]))
    return '"%s"' % text if re.search(r"\s", text) else text


def check_namespace(namespace):
    """The namespace, after checking it is one word ssh-keygen and allowed_signers take as it is."""
    if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
        raise InvalidInputError("The namespace %r is not one word of letters, digits and @ . _ + - ; use %s unless "
                                "the case was signed in another." % (namespace, NAMESPACE))
    return namespace


# ---- keys --------------------------------------------------------------------------------------------------------

def _read_text(path, what):
    try:
        with open(path, "rb") as f:
            return f.read(1024 * 1024)
    except (IOError, OSError) as exc:
        raise InvalidInputError("The %s %s cannot be read: %s." % (what, path, exc.strerror or exc), failed_path=path)


def _ssh_string(blob, offset):
    if offset + 4 > len(blob):
        raise ValueError("truncated")
    (size,) = struct.unpack(">I", blob[offset:offset + 4])
    end = offset + 4 + size
    if end > len(blob):
        raise ValueError("truncated")
    return blob[offset + 4:end], end


def parse_public_key(text):
    """``(type, base64)`` of the first public key in ``text`` (a .pub line, an allowed_signers or authorized_keys
    line), or None. The base64 must decode to a key blob of the type it is written with."""
    for line in text.splitlines():
        words = line.split()
        for i in range(len(words) - 1):
            kind, b64 = words[i], words[i + 1]
            if not _KEY_TYPE_RE.match(kind):
                continue
            try:
                blob = base64.b64decode(b64.encode("ascii"), validate=True)
                name = _ssh_string(blob, 0)[0]
            except (ValueError, UnicodeError, binascii.Error):
                continue
            if name == kind.encode("ascii"):
                return kind, b64
    return None


def _private_key_public_half(data):
    """The public key of an OpenSSH private key file (format openssh-key-v1, its public part is never encrypted)."""
    text = data.decode("ascii", "replace")
    match = re.search(r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE KEY-----", text, re.S)
    if not match:
        return None
    try:
        blob = base64.b64decode("".join(match.group(1).split()))
        magic = b"openssh-key-v1\0"
        if not blob.startswith(magic):
            return None
        offset = len(magic)
        for dummy in ("cipher", "kdf", "kdf options"):
            offset = _ssh_string(blob, offset)[1]
        (count,) = struct.unpack(">I", blob[offset:offset + 4])
        if count < 1:
            return None
        key = _ssh_string(blob, offset + 4)[0]
        kind = _ssh_string(key, 0)[0].decode("ascii")
    except (ValueError, UnicodeError, binascii.Error, struct.error):
        return None
    return kind, base64.b64encode(key).decode("ascii")


def public_key(key, timeout=DEFAULT_TIMEOUT):
    """``(type, base64)`` of the key file ``key``: a public key file (its private half in ssh-agent), or a private key
    (its public part read without its passphrase, else its .pub beside it, else ``ssh-keygen -y``)."""
    data = _read_text(key, "key")
    found = parse_public_key(data.decode("ascii", "replace"))
    if found is None:
        found = _private_key_public_half(data)
    if found is None and os.path.isfile(key + ".pub"):
        found = parse_public_key(_read_text(key + ".pub", "public key").decode("ascii", "replace"))
    if found is None:
        rc, out, err = run([SSH_KEYGEN, "-y", "-f", key], timeout=timeout, env=_ENV)
        if rc == NOT_STARTED_RC:
            raise SigningError(_SSH_KEYGEN_MISSING % err)
        found = parse_public_key(out) if rc == 0 else None
        if found is None:
            raise SigningError("The public key of %s cannot be found: it is not a public or an OpenSSH private key, "
                               "there is no %s.pub beside it, and ssh-keygen -y says: %s. Give the key's .pub file "
                               "(with its private half in ssh-agent) or a private key without a passphrase."
                               % (key, key, _one_line(err) or "nothing"), failed_path=key)
    return found


def fingerprint(key, timeout=DEFAULT_TIMEOUT):
    """What ``ssh-keygen -l -E sha256 -f key`` says of a key file (public or private):
    dict(fingerprint "SHA256:...", bits, type "ED25519", comment, line)."""
    rc, out, err = run([SSH_KEYGEN, "-l", "-E", "sha256", "-f", key], timeout=timeout, env=_ENV)
    if rc == NOT_STARTED_RC:
        raise SigningError(_SSH_KEYGEN_MISSING % err)
    line = out.strip().splitlines()[0] if rc == 0 and out.strip() else ""
    match = re.match(r"^(\d+) (\S+) ?(.*?) \(([^()]+)\)$", line)
    if not match:
        raise SigningError("ssh-keygen -lf cannot read the key %s: %s." % (key, _one_line(err or out) or "rc %d" % rc),
                           failed_path=key)
    return {"bits": int(match.group(1)), "fingerprint": match.group(2), "comment": match.group(3),
            "type": match.group(4), "line": line}


def allowed_signers_line(principal, namespace, key):
    """The one line of allowed_signers: principal namespaces="<ns>" <key type> <key>."""
    return '%s namespaces="%s" %s %s\n' % (principal_field(principal), check_namespace(namespace), key[0], key[1])


def read_allowed_signers(path):
    """``[(principal, key)]`` of an allowed_signers file (comments and blank lines skipped)."""
    data = _read_text(path, "allowed_signers file").decode("utf-8", "replace")
    signers = []
    for line in data.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith('"'):
            end = line.find('"', 1)
            principal = line[1:end] if end > 0 else None
        else:
            principal = line.split()[0]
        signers.append((principal, parse_public_key(line)))
    return signers


def verify_command(principal, namespace=NAMESPACE):
    """The shell line that verifies every ``*.sig`` of a case folder with ssh-keygen alone (run in the folder)."""
    return ("for s in *%s; do printf '%%s: ' \"${s%%%s}\"; ssh-keygen -Y verify -f %s -I %s -n %s -s \"$s\" "
            "< \"${s%%%s}\" 2>&1 || echo \"FAILED: ${s%%%s}\"; done"
            % (SIG_SUFFIX, SIG_SUFFIX, ALLOWED_SIGNERS_NAME, shlex.quote(principal.strip()),
               shlex.quote(check_namespace(namespace)), SIG_SUFFIX, SIG_SUFFIX))


# ---- ssh-keygen --------------------------------------------------------------------------------------------------

def _one_line(text):
    return " ".join((text or "").split())


def _verify_one(path, signature, allowed_signers, principal, namespace, timeout):
    """``(ok, message)``: ssh-keygen -Y verify of ``signature`` for the bytes of ``path`` (given on its stdin).

    The one program this collection runs with a file as stdin: runner.run() hands a program text only, and a record
    is bytes (a report may hold any)."""
    argv = [SSH_KEYGEN, "-Y", "verify", "-f", allowed_signers, "-I", principal, "-n", namespace, "-s", signature]
    try:
        src = open(path, "rb")
    except (IOError, OSError) as exc:
        return False, "%s cannot be read: %s" % (path, exc.strerror or exc)
    try:
        try:
            # not run_command (module_utils get no AnsibleModule): a child bounded in time, in a process group of its own
            # pylint: disable-next=ansible-bad-function
            proc = subprocess.Popen(argv, stdin=src, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, close_fds=True,
                                    env=dict(os.environ, **_ENV), start_new_session=True)
        except OSError as exc:
            raise SigningError(_SSH_KEYGEN_MISSING % (exc.strerror or exc))
        try:
            out = proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                proc.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            return False, "ssh-keygen -Y verify did not end within %g s" % timeout
    finally:
        src.close()
    return proc.returncode == 0, _one_line(out.decode("utf-8", "replace"))


def _sign_error(key, path, rc, err, timeout):
    agent = os.environ.get("SSH_AUTH_SOCK")
    where = ("the ssh-agent at SSH_AUTH_SOCK=%s does not hold it" % agent if agent else
             "no ssh-agent holds it (SSH_AUTH_SOCK is not set)")
    if rc == NOT_STARTED_RC:
        return SigningError(_SSH_KEYGEN_MISSING % err)
    if rc == TIMED_OUT_RC:
        return SigningError("ssh-keygen did not sign %s with %s within %g s (an ssh-agent waiting for a "
                            "confirmation?); it was stopped and nothing was written to the case."
                            % (path, key, timeout), failed_path=path)
    if "passphrase" in err:
        return SigningError("The key %s is protected by a passphrase and %s, so it cannot sign without a prompt, "
                            "which is never waited for. Add it to an agent (ssh-add %s) and run with that agent's "
                            "SSH_AUTH_SOCK, or use a key without a passphrase. Nothing was written to the case."
                            % (key, where, key), failed_path=path)
    if "No private key found" in err:
        return SigningError("%s is a public key and %s (its private half): load it with ssh-add (or name the private "
                            "key file) and run with that agent's SSH_AUTH_SOCK. Nothing was written to the case. "
                            "ssh-keygen says: %s" % (key, where, _one_line(err)), failed_path=path)
    return SigningError("ssh-keygen could not sign %s with %s: %s. Nothing was written to the case."
                        % (path, key, _one_line(err) or "rc %d" % rc), failed_path=path)


def _sign_checked(path, key, namespace, work, index, allowed_signers, principal, timeout):
    """The signature (text) of ``path`` made by ssh-keygen in ``work`` (through a link: it writes <arg>.sig beside
    its argument), after checking that it verifies for the file with ``allowed_signers``."""
    link = os.path.join(work, "%d-%s" % (index, os.path.basename(path)))
    os.symlink(path, link)
    rc, dummy, err = run([SSH_KEYGEN, "-Y", "sign", "-f", key, "-n", namespace, link], timeout=timeout, env=_ENV)
    if rc != 0 or not os.path.isfile(link + SIG_SUFFIX):
        raise _sign_error(key, path, rc, err, timeout)
    ok, message = _verify_one(path, link + SIG_SUFFIX, allowed_signers, principal, namespace, timeout)
    if not ok:
        raise SigningError("The signature ssh-keygen made of %s with %s does not verify against the public key taken "
                           "for it: %s. Is the .pub beside the key another key's, or did the file change while it was "
                           "signed? Nothing was written to the case." % (path, key, message), failed_path=path)
    with open(link + SIG_SUFFIX, "rb") as f:
        return f.read().decode("ascii")


# ---- sign, verify ------------------------------------------------------------------------------------------------

def _check_files(files):
    if not files:
        raise InvalidInputError("No file to sign or verify was given.")
    paths = []
    for path in files:
        if not isinstance(path, str) or not os.path.isabs(path):
            raise InvalidInputError("The path %r is not an absolute path; give one." % (path,))
        path = os.path.normpath(path)
        if path.endswith(SIG_SUFFIX):
            raise InvalidInputError("%s is a signature; name the record it signs." % path, failed_path=path)
        if path not in paths:
            paths.append(path)
    return paths


def _check_record(path):
    if not os.path.isfile(path):
        raise EvidenceSourceError("%s is %s; nothing was signed." % (
            path, "not a regular file" if os.path.lexists(path) else "missing"), failed_path=path)
    sig = path + SIG_SUFFIX
    if os.path.lexists(sig) and (os.path.islink(sig) or not os.path.isfile(sig)):
        raise DestinationError("%s is not a regular file; it is left as it is and nothing was signed." % sig,
                               failed_path=sig)


def _existing_mismatch(path, wanted, same):
    """A sentence when ``path`` exists and is not ``wanted`` (compared by ``same``), else None."""
    if not os.path.lexists(path):
        return None
    if os.path.islink(path) or not os.path.isfile(path):
        return "%s is not a regular file" % path
    text = _read_text(path, "file").decode("utf-8", "replace")
    return None if same(text, wanted) else "%s holds another signer: %s" % (path, _one_line(text)[:200])


def _signers_folder(folder, files):
    """The folder of examiner.pub and allowed_signers: ``folder``, default the first file's."""
    folder = os.path.normpath(folder) if folder else os.path.dirname(files[0])
    if not os.path.isdir(folder):
        raise DestinationError("The folder %s for examiner.pub and allowed_signers is not a folder." % folder,
                               failed_path=folder)
    return folder


def _other_signer(signers_path, line, pub_path, pub):
    """A sentence when the folder's allowed_signers or examiner.pub names another signer or key than ``line`` and
    ``pub``, else None."""
    return (_existing_mismatch(signers_path, line, lambda text, want: text.strip() == want.strip())
            or _existing_mismatch(pub_path, pub, lambda text, want: parse_public_key(text) == want))


def _key_path(key):
    if not isinstance(key, str) or not key:
        raise InvalidInputError("No key was given; give the path of the examiner's SSH key.")
    key = os.path.abspath(key)
    if not os.path.isfile(key):
        raise InvalidInputError("The key %s is %s." % (key, "not a regular file" if os.path.lexists(key) else
                                                       "missing"), failed_path=key)
    return key


def probe(key, principal, namespace=NAMESPACE, check_mode=False, timeout=DEFAULT_TIMEOUT):
    """What the key is (fingerprint, type, the allowed_signers line, the verify command), and, unless ``check_mode``,
    proof that it signs without a prompt: sign() of a probe in a private temporary folder, which is then removed.
    Nothing is written anywhere else; raises as sign() does."""
    work = tempfile.mkdtemp(prefix="vmcollect-probe-")
    try:
        record = os.path.join(work, "probe")
        write_atomic(record, "dfir.vmcollect signing probe\n", durable=False)
        signed = sign([record], key, principal, namespace, check_mode=check_mode, timeout=timeout)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    facts = ("principal", "namespace", "fingerprint", "key_type", "allowed_signers_line", "command")
    result = dict((k, signed[k]) for k in facts)
    result.update(changed=False, files=[], written=[], probed=not check_mode)
    return result


def sign(files, key, principal, namespace=NAMESPACE, folder=None, check_mode=False, timeout=DEFAULT_TIMEOUT):
    """Sign each of ``files`` with ``key`` (``<file>.sig``), and put examiner.pub and allowed_signers in ``folder``
    (default: the first file's folder). A signature that already verifies for the file's bytes with this key and
    principal is kept; any other is replaced. Returns dict(changed, files=[{path, signature, action, changed,
    reason}], content={name: text} of each .sig, examiner.pub and allowed_signers (not in check mode), ...)."""
    files = _check_files(files)
    principal_field(principal)
    principal = principal.strip()
    namespace = check_namespace(namespace)
    key = _key_path(key)
    folder = _signers_folder(folder, files)
    for path in files:
        _check_record(path)
    pub = public_key(key, timeout)
    line = allowed_signers_line(principal, namespace, pub)
    pub_text = "%s %s %s\n" % (pub[0], pub[1], principal)
    pub_path = os.path.join(folder, PUBLIC_KEY_NAME)
    signers_path = os.path.join(folder, ALLOWED_SIGNERS_NAME)
    problem = _other_signer(signers_path, line, pub_path, pub)
    if problem:
        raise DestinationError("%s. The case was signed by another examiner or key; signing it with %s (%s) "
                               "would replace their signatures. Verify it as it is, or remove %s, %s and its "
                               "*.sig files first to sign it anew. Nothing was signed."
                               % (problem, key, principal, signers_path, pub_path), failed_path=folder)
    work = tempfile.mkdtemp(prefix="vmcollect-sign-")
    try:
        work_signers = os.path.join(work, ALLOWED_SIGNERS_NAME)
        write_atomic(work_signers, line, durable=False)
        work_pub = os.path.join(work, PUBLIC_KEY_NAME)
        write_atomic(work_pub, pub_text, durable=False)
        key_print = fingerprint(work_pub, timeout)
        results = []
        for path in files:
            sig = path + SIG_SUFFIX
            entry = {"path": path, "signature": sig, "changed": True, "action": "signed", "reason": None}
            if os.path.lexists(sig):
                ok, message = _verify_one(path, sig, work_signers, principal, namespace, timeout)
                entry.update(changed=not ok, action="kept" if ok else "replaced", reason=message)
            results.append(entry)
        written = []
        if not check_mode:
            # every signature first, each checked against its file: a key that cannot sign writes nothing at all
            made = []
            for index, entry in enumerate(results):
                if entry["changed"]:
                    made.append((entry, _sign_checked(entry["path"], key, namespace, work, index, work_signers,
                                                      principal, timeout)))
            for path, text in ((signers_path, line), (pub_path, pub_text)):
                if not os.path.lexists(path):
                    write_atomic(path, text, mode=FILE_MODE)
                    written.append(path)
            for entry, text in made:
                write_atomic(entry["signature"], text, mode=FILE_MODE)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    would = [path for path in (signers_path, pub_path) if not os.path.lexists(path)] if check_mode else written
    result = {"changed": bool(would) or any(e["changed"] for e in results), "files": results,
              "allowed_signers": signers_path, "examiner_pub": pub_path, "written": would,
              "principal": principal, "namespace": namespace, "fingerprint": key_print["fingerprint"],
              "key_type": key_print["type"], "allowed_signers_line": line.rstrip("\n"),
              "command": verify_command(principal, namespace)}
    if not check_mode:
        # what is now in the folder, for place() where the records lie
        result["content"] = dict((os.path.basename(path), _read_text(path, "file").decode("ascii", "replace"))
                                 for path in [e["signature"] for e in results] + [pub_path, signers_path])
    return result


def _given_text(signatures, name):
    text = signatures.get(name)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError("The signatures given hold no %s; give what the signing task returned (content)."
                                % name)
    return text


def place(files, signatures, principal=None, namespace=NAMESPACE, folder=None, check_mode=False,
          timeout=DEFAULT_TIMEOUT, mode=0o640):
    """Put the signatures made elsewhere (``signatures``: {name: text} as sign() returns in ``content``: each
    ``<record>.sig``, examiner.pub and allowed_signers) beside the records ``files`` in ``folder`` (default: the first
    file's folder), then verify every record there, as verify() does.

    Each given signature is checked against the record's bytes here before anything is written: one that does not
    verify (the record changed since it was read) writes nothing at all. A signature already there that verifies
    with the given allowed_signers is kept; examiner.pub and allowed_signers are written when missing, and a case
    whose own name another signer or key is refused, as sign() refuses it. Returns verify()'s result with changed,
    written, and per file action (signed, replaced, kept) and changed."""
    files = _check_files(files)
    namespace = check_namespace(namespace)
    if not isinstance(signatures, dict) or not signatures:
        raise InvalidInputError("No signatures were given; give what the signing task returned (content).")
    folder = _signers_folder(folder, files)
    folders = sorted(set(os.path.dirname(path) for path in files))
    if len(folders) > 1:
        raise InvalidInputError("The records to put signatures beside lie in more than one folder (%s); the signatures "
                                "are named by the records' file names, so give the records of one folder."
                                % ", ".join(folders))
    names = dict((os.path.basename(path) + SIG_SUFFIX, path) for path in files)
    unknown = sorted(set(signatures) - set(names) - set([PUBLIC_KEY_NAME, ALLOWED_SIGNERS_NAME]))
    if unknown:
        raise InvalidInputError("The signatures given name %s, which is no signature of the records given, nor %s or "
                                "%s; nothing was written." % (", ".join(unknown), PUBLIC_KEY_NAME,
                                                              ALLOWED_SIGNERS_NAME))
    signers_text = _given_text(signatures, ALLOWED_SIGNERS_NAME)
    pub_text = _given_text(signatures, PUBLIC_KEY_NAME)
    pub = parse_public_key(pub_text)
    signers_path = os.path.join(folder, ALLOWED_SIGNERS_NAME)
    pub_path = os.path.join(folder, PUBLIC_KEY_NAME)
    work = tempfile.mkdtemp(prefix="vmcollect-place-")
    try:
        work_signers = os.path.join(work, ALLOWED_SIGNERS_NAME)
        write_atomic(work_signers, signers_text, durable=False)
        signers = read_allowed_signers(work_signers)
        if len(signers) != 1 or pub is None or signers[0][1] != pub:
            raise InvalidInputError("The allowed_signers and examiner.pub given do not name one signer with the key of "
                                    "examiner.pub; give what the signing task returned. Nothing was written.")
        given_principal = signers[0][0]
        if principal is not None and principal.strip() and principal.strip() != given_principal:
            raise InvalidInputError("The allowed_signers given names %s, not %s; nothing was written."
                                    % (given_principal, principal.strip()))
        principal = given_principal
        problem = _other_signer(signers_path, signers_text, pub_path, pub)
        if problem:
            raise DestinationError("%s. The case was signed by another examiner or key; nothing was written. Verify "
                                   "it as it is, or remove %s, %s and its *.sig files first to sign it anew."
                                   % (problem, signers_path, pub_path), failed_path=folder)
        results = []
        for index, path in enumerate(files):
            _check_record(path)
            sig = path + SIG_SUFFIX
            entry = {"path": path, "signature": sig, "changed": True, "action": "signed"}
            if os.path.lexists(sig):
                ok, dummy = _verify_one(path, sig, work_signers, principal, namespace, timeout)
                entry.update(changed=not ok, action="kept" if ok else "replaced")
            if entry["changed"]:
                name = os.path.basename(sig)
                text = _given_text(signatures, name)
                given = os.path.join(work, "%d%s" % (index, SIG_SUFFIX))
                write_atomic(given, text, durable=False)
                ok, message = _verify_one(path, given, work_signers, principal, namespace, timeout)
                if not ok:
                    raise SignatureError("The signature given for %s does not verify for its bytes here: %s. Did it "
                                         "change after it was read to be signed? Nothing was written."
                                         % (path, message), failed_path=path)
                entry["text"] = text
            results.append(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    written = [path for path in (signers_path, pub_path) if not os.path.lexists(path)]
    if check_mode:
        result = {"verified": None, "files": [dict((k, v) for k, v in e.items() if k != "text") for e in results],
                  "allowed_signers": signers_path, "principal": principal, "namespace": namespace,
                  "fingerprint": None, "command": verify_command(principal, namespace)}
    else:
        for path, text in ((signers_path, signers_text), (pub_path, pub_text)):
            if path in written:
                write_atomic(path, text, mode=mode)
        for entry in results:
            if entry.pop("text", None) is not None:
                write_atomic(entry["signature"], signatures[os.path.basename(entry["signature"])], mode=mode)
        result = require_verified(verify(files, signers_path, principal, namespace, timeout))
        for entry, checked in zip(results, result["files"]):
            checked.update(action=entry["action"], changed=entry["changed"])
    result.update(changed=bool(written) or any(e["changed"] for e in results), written=written)
    return result


def verify(files, allowed_signers, principal=None, namespace=NAMESPACE, timeout=DEFAULT_TIMEOUT):
    """ssh-keygen -Y verify of each file's ``<file>.sig`` against ``allowed_signers``; the principal defaults to the
    only one it names. Returns dict(verified (all ok), files=[{path, signature, verified, message}], principal,
    namespace, fingerprint, command); a missing signature or file is a failed entry, not an exception."""
    files = _check_files(files)
    namespace = check_namespace(namespace)
    allowed_signers = os.path.normpath(allowed_signers)
    if not os.path.isfile(allowed_signers):
        raise EvidenceSourceError("The allowed_signers file %s is missing; the case is not signed (or it lies "
                                  "elsewhere)." % allowed_signers, failed_path=allowed_signers)
    signers = read_allowed_signers(allowed_signers)
    if principal is None or not principal.strip():
        names = sorted(set(p for p, dummy in signers if p))
        if len(names) != 1:
            raise InvalidInputError("%s names %s; give the principal to verify for." % (
                allowed_signers, "no signer" if not names else "several signers (%s)" % ", ".join(names)),
                failed_path=allowed_signers)
        principal = names[0]
    else:
        principal_field(principal)
        principal = principal.strip()
    keys = [k for p, k in signers if p == principal and k]
    key_print = None
    if len(keys) == 1:
        work = tempfile.mkdtemp(prefix="vmcollect-verify-")
        try:
            pub = os.path.join(work, PUBLIC_KEY_NAME)
            write_atomic(pub, "%s %s\n" % keys[0], durable=False)
            key_print = fingerprint(pub, timeout)["fingerprint"]
        finally:
            shutil.rmtree(work, ignore_errors=True)
    results = []
    for path in files:
        sig = path + SIG_SUFFIX
        entry = {"path": path, "signature": sig}
        if not os.path.isfile(sig):
            entry.update(verified=False, message="%s is missing: %s is not signed" % (sig, path))
        elif not os.path.isfile(path):
            entry.update(verified=False, message="%s is missing (its signature %s is there)" % (path, sig))
        else:
            ok, message = _verify_one(path, sig, allowed_signers, principal, namespace, timeout)
            entry.update(verified=ok, message=message)
        results.append(entry)
    return {"verified": all(e["verified"] for e in results), "files": results, "allowed_signers": allowed_signers,
            "principal": principal, "namespace": namespace, "fingerprint": key_print,
            "command": verify_command(principal, namespace)}


def require_verified(result):
    """Raise SignatureError (details: the result) unless every signature of a verify() result verified."""
    bad = ["%s: %s" % (e["path"], e["message"]) for e in result["files"] if not e["verified"]]
    if bad:
        raise SignatureError("%d of %d signature(s) did not verify against %s for %s (namespace %s); the records "
                             "named changed since they were signed, or another key signed them: %s"
                             % (len(bad), len(result["files"]), result["allowed_signers"], result["principal"],
                                result["namespace"], "; ".join(bad)), failures=bad, **result)
    return result
