# -*- coding: utf-8 -*-
# Copyright: (c) 2026, dfir.vmcollect contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What this kernel's userfaultfd can do, asked of the kernel itself (a read: a descriptor opened, asked, closed).

QEMU's background snapshot write-protects guest RAM through userfaultfd. On anonymous memory any kernel since 5.7
does it; on hugetlbfs and shared memory (memory-backend-file, -memfd, hugepages) only a kernel that advertises
``UFFD_FEATURE_WP_HUGETLBFS_SHMEM`` (5.19 and later, with PTE markers). The numbers are the kernel's ABI
(include/uapi/linux/userfaultfd.h, the syscall tables).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import os
import platform
import struct

UFFD_API = 0xAA
UFFDIO_API = 0xC018AA3F  # _IOWR(0xAA, 0x3F, struct uffdio_api {__u64 api, features, ioctls})
UFFD_USER_MODE_ONLY = 1
FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
_SYSCALL = {"x86_64": 323, "aarch64": 282, "ppc64le": 364, "s390x": 355}


def kernel_features():
    """(the userfaultfd features this kernel offers as an int, None), or (None, why) when it cannot be asked."""
    number = _SYSCALL.get(platform.machine())
    if number is None:
        return None, "no userfaultfd syscall number is known for %s" % platform.machine()
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK | UFFD_USER_MODE_ONLY)
    if fd < 0:
        fd = libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK)  # kernels before 5.11 refuse the user-mode flag
    if fd < 0:
        return None, "userfaultfd() failed: %s" % os.strerror(ctypes.get_errno())
    try:
        buf = ctypes.create_string_buffer(struct.pack("=QQQ", UFFD_API, 0, 0), 24)
        if libc.ioctl(fd, ctypes.c_ulong(UFFDIO_API), buf) != 0:
            return None, "UFFDIO_API failed: %s" % os.strerror(ctypes.get_errno())
        return struct.unpack("=QQQ", buf.raw)[1], None
    finally:
        os.close(fd)
