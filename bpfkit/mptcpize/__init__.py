"""The rewrite pillar: unmodified programs in selected cgroups get MPTCP sockets.

rewrite.py  attach, detach, status, run: the fmod_ret program on
            update_socket_protocol and its pinned maps (what is attached now)
systemd.py  the same across reboots (state file + boot service) and unit starts
            (drop-ins); a running unit's cgroup"""
