"""The scheduler pillar: BPF MPTCP packet schedulers.

registry.py   the name rule and the reference schedulers of bpf/sched/ with their
              metadata (pure: the lab and the bench import it)
lifecycle.py  load (register + pin), use, unload, list, show
scaffold.py   `sched new`: a scheduler source to start from
trace.py      the decisions of get_send()/get_retrans(), as they happen

Importing this package imports nothing else: the lab may name schedulers
without importing the loader."""
