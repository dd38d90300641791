# The seccomp profile of every OpenClaw container (an OCI / Podman seccomp.json, rendered with
# builtins.toJSON). Anything not listed fails with EPERM.
#
# The allowlist is Podman's default one (containers/common seccomp.json, from which the
# original project's profile was taken), minus everything that creates or enters
# namespaces, makes device nodes, changes user or group ids, or mounts:
#   - unshare, setns; clone only without namespace flags (arg0 & 0x7E020000 == 0:
#     CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET); clone3, whose
#     flags sit behind a pointer seccomp cannot read, fails with ENOSYS so the C library
#     falls back to clone;
#   - mknod, mknodat;
#   - the setuid family (setuid, setgid, setreuid, setregid, setresuid, setresgid,
#     setfsuid, setfsgid, setgroups and their 32-bit forms);
#   - mount, umount, umount2, pivot_root and the new mount API (fsopen, fsconfig, fsmount,
#     fspick, move_mount, open_tree, mount_setattr);
#   - ptrace, process_vm_readv/writev, pidfd_getfd (reading other processes), keyctl,
#     syslog, reboot, memfd_secret, fanotify_mark, name_to_handle_at.
# The container also runs with --cap-drop ALL and no-new-privileges, so most of what remains
# privileged fails for lack of a capability as well.
let
  allowed = [
    "_llseek"
    "_newselect"
    "accept"
    "accept4"
    "access"
    "adjtimex"
    "alarm"
    "bind"
    "brk"
    "capget"
    "capset"
    "chdir"
    "chmod"
    "chown"
    "chown32"
    "clock_adjtime"
    "clock_adjtime64"
    "clock_getres"
    "clock_getres_time64"
    "clock_gettime"
    "clock_gettime64"
    "clock_nanosleep"
    "clock_nanosleep_time64"
    "close"
    "close_range"
    "connect"
    "copy_file_range"
    "creat"
    "dup"
    "dup2"
    "dup3"
    "epoll_create"
    "epoll_create1"
    "epoll_ctl"
    "epoll_ctl_old"
    "epoll_pwait"
    "epoll_pwait2"
    "epoll_wait"
    "epoll_wait_old"
    "eventfd"
    "eventfd2"
    "execve"
    "execveat"
    "exit"
    "exit_group"
    "faccessat"
    "faccessat2"
    "fadvise64"
    "fadvise64_64"
    "fallocate"
    "fchdir"
    "fchmod"
    "fchmodat"
    "fchown"
    "fchown32"
    "fchownat"
    "fcntl"
    "fcntl64"
    "fdatasync"
    "fgetxattr"
    "flistxattr"
    "flock"
    "fork"
    "fremovexattr"
    "fsetxattr"
    "fstat"
    "fstat64"
    "fstatat64"
    "fstatfs"
    "fstatfs64"
    "fsync"
    "ftruncate"
    "ftruncate64"
    "futex"
    "futex_time64"
    "futimesat"
    "get_mempolicy"
    "get_robust_list"
    "get_thread_area"
    "getcpu"
    "getcwd"
    "getdents"
    "getdents64"
    "getegid"
    "getegid32"
    "geteuid"
    "geteuid32"
    "getgid"
    "getgid32"
    "getgroups"
    "getgroups32"
    "getitimer"
    "getpeername"
    "getpgid"
    "getpgrp"
    "getpid"
    "getppid"
    "getpriority"
    "getrandom"
    "getresgid"
    "getresgid32"
    "getresuid"
    "getresuid32"
    "getrlimit"
    "getrusage"
    "getsid"
    "getsockname"
    "getsockopt"
    "gettid"
    "gettimeofday"
    "getuid"
    "getuid32"
    "getxattr"
    "inotify_add_watch"
    "inotify_init"
    "inotify_init1"
    "inotify_rm_watch"
    "io_cancel"
    "io_destroy"
    "io_getevents"
    "io_setup"
    "io_submit"
    "ioctl"
    "ioprio_get"
    "ioprio_set"
    "ipc"
    "kill"
    "landlock_add_rule"
    "landlock_create_ruleset"
    "landlock_restrict_self"
    "lchown"
    "lchown32"
    "lgetxattr"
    "link"
    "linkat"
    "listen"
    "listxattr"
    "llistxattr"
    "lremovexattr"
    "lseek"
    "lsetxattr"
    "lstat"
    "lstat64"
    "madvise"
    "mbind"
    "membarrier"
    "memfd_create"
    "mincore"
    "mkdir"
    "mkdirat"
    "mlock"
    "mlock2"
    "mlockall"
    "mmap"
    "mmap2"
    "mprotect"
    "mq_getsetattr"
    "mq_notify"
    "mq_open"
    "mq_timedreceive"
    "mq_timedreceive_time64"
    "mq_timedsend"
    "mq_timedsend_time64"
    "mq_unlink"
    "mremap"
    "msgctl"
    "msgget"
    "msgrcv"
    "msgsnd"
    "msync"
    "munlock"
    "munlockall"
    "munmap"
    "nanosleep"
    "newfstatat"
    "open"
    "openat"
    "openat2"
    "pause"
    "pidfd_open"
    "pidfd_send_signal"
    "pipe"
    "pipe2"
    "pkey_alloc"
    "pkey_free"
    "pkey_mprotect"
    "poll"
    "ppoll"
    "ppoll_time64"
    "prctl"
    "pread64"
    "preadv"
    "preadv2"
    "prlimit64"
    "process_mrelease"
    "pselect6"
    "pselect6_time64"
    "pwrite64"
    "pwritev"
    "pwritev2"
    "read"
    "readahead"
    "readdir"
    "readlink"
    "readlinkat"
    "readv"
    "recv"
    "recvfrom"
    "recvmmsg"
    "recvmmsg_time64"
    "recvmsg"
    "remap_file_pages"
    "removexattr"
    "rename"
    "renameat"
    "renameat2"
    "restart_syscall"
    "rmdir"
    "rseq"
    "rt_sigaction"
    "rt_sigpending"
    "rt_sigprocmask"
    "rt_sigqueueinfo"
    "rt_sigreturn"
    "rt_sigsuspend"
    "rt_sigtimedwait"
    "rt_sigtimedwait_time64"
    "rt_tgsigqueueinfo"
    "sched_get_priority_max"
    "sched_get_priority_min"
    "sched_getaffinity"
    "sched_getattr"
    "sched_getparam"
    "sched_getscheduler"
    "sched_rr_get_interval"
    "sched_rr_get_interval_time64"
    "sched_setaffinity"
    "sched_setattr"
    "sched_setparam"
    "sched_setscheduler"
    "sched_yield"
    "seccomp"
    "select"
    "semctl"
    "semget"
    "semop"
    "semtimedop"
    "semtimedop_time64"
    "send"
    "sendfile"
    "sendfile64"
    "sendmmsg"
    "sendmsg"
    "sendto"
    "set_mempolicy"
    "set_robust_list"
    "set_thread_area"
    "set_tid_address"
    "setitimer"
    "setpgid"
    "setpriority"
    "setrlimit"
    "setsid"
    "setsockopt"
    "setxattr"
    "shmat"
    "shmctl"
    "shmdt"
    "shmget"
    "shutdown"
    "sigaction"
    "sigaltstack"
    "signal"
    "signalfd"
    "signalfd4"
    "sigpending"
    "sigprocmask"
    "sigreturn"
    "sigsuspend"
    "socketcall"
    "socketpair"
    "splice"
    "stat"
    "stat64"
    "statfs"
    "statfs64"
    "statx"
    "symlink"
    "symlinkat"
    "sync"
    "sync_file_range"
    "syncfs"
    "syscall"
    "sysinfo"
    "tee"
    "tgkill"
    "time"
    "timer_create"
    "timer_delete"
    "timer_getoverrun"
    "timer_gettime"
    "timer_gettime64"
    "timer_settime"
    "timer_settime64"
    "timerfd"
    "timerfd_create"
    "timerfd_gettime"
    "timerfd_gettime64"
    "timerfd_settime"
    "timerfd_settime64"
    "times"
    "tkill"
    "truncate"
    "truncate64"
    "ugetrlimit"
    "umask"
    "uname"
    "unlink"
    "unlinkat"
    "utime"
    "utimensat"
    "utimensat_time64"
    "utimes"
    "vfork"
    "wait4"
    "waitid"
    "waitpid"
    "write"
    "writev"
  ];
  # Namespace-creating clone flags.
  cloneNamespaceFlags = 2114060288; # 0x7E020000
in {
  defaultAction = "SCMP_ACT_ERRNO";
  defaultErrnoRet = 1;
  archMap = [
    {
      architecture = "SCMP_ARCH_X86_64";
      subArchitectures = ["SCMP_ARCH_X86" "SCMP_ARCH_X32"];
    }
    {
      architecture = "SCMP_ARCH_AARCH64";
      subArchitectures = ["SCMP_ARCH_ARM"];
    }
  ];
  syscalls = [
    {
      names = allowed;
      action = "SCMP_ACT_ALLOW";
    }
    {
      names = ["clone"];
      action = "SCMP_ACT_ALLOW";
      args = [
        {
          index = 0;
          value = cloneNamespaceFlags;
          valueTwo = 0;
          op = "SCMP_CMP_MASKED_EQ";
        }
      ];
    }
    {
      names = ["clone3"];
      action = "SCMP_ACT_ERRNO";
      errnoRet = 38; # ENOSYS
    }
    # socket(2), except the kernel audit netlink socket (AF_NETLINK = 16, NETLINK_AUDIT = 9),
    # as Podman's default without CAP_AUDIT_WRITE: two rules, either suffices.
    {
      names = ["socket"];
      action = "SCMP_ACT_ALLOW";
      args = [
        {
          index = 0;
          value = 16;
          valueTwo = 0;
          op = "SCMP_CMP_NE";
        }
      ];
    }
    {
      names = ["socket"];
      action = "SCMP_ACT_ALLOW";
      args = [
        {
          index = 2;
          value = 9;
          valueTwo = 0;
          op = "SCMP_CMP_NE";
        }
      ];
    }
    # personality(2): only the harmless personas (as Podman's default).
    {
      names = ["personality"];
      action = "SCMP_ACT_ALLOW";
      args = [
        {
          index = 0;
          value = 0;
          valueTwo = 0;
          op = "SCMP_CMP_EQ";
        }
      ];
    }
    {
      names = ["personality"];
      action = "SCMP_ACT_ALLOW";
      args = [
        {
          index = 0;
          value = 8;
          valueTwo = 0;
          op = "SCMP_CMP_EQ";
        }
      ];
    }
    {
      names = ["personality"];
      action = "SCMP_ACT_ALLOW";
      args = [
        {
          index = 0;
          value = 4294967295;
          valueTwo = 0;
          op = "SCMP_CMP_EQ";
        }
      ];
    }
    {
      names = ["arch_prctl" "modify_ldt"];
      action = "SCMP_ACT_ALLOW";
      includes.arches = ["amd64" "x32"];
    }
  ];
}
