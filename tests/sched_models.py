"""Python models of the reference schedulers' decisions, for the unit tests: the
same integer arithmetic as bpf/sched/blest.bpf.c and bpf/sched/ecf.bpf.c, so a
test can state what the C must decide for given subflow numbers. Test code only:
bpfkit itself never decides for a scheduler."""


def blest_skips_slow(*, fast_srtt_us: int, fast_mss: int, fast_cwnd: int, slow_srtt_us: int, slow_mss: int,
                     slow_inflight: int, send_window: int, lambda_milli: int = 1000) -> bool:
    """BLEST's decision in bpf/sched/blest.bpf.c (same integer arithmetic):
    True when sending on the slow subflow would block the fast one."""
    milli = 1000
    fast_srtt_us = fast_srtt_us or 1
    rtts = min(max(slow_srtt_us * milli // fast_srtt_us, milli), 64 * milli)
    x = fast_mss * (fast_cwnd * milli + (rtts - milli) // 2) // milli * rtts // milli
    slow_claim = slow_mss * (slow_inflight + 1)
    room = max(send_window - slow_claim, 0)
    return x * lambda_milli // milli > room


def ecf_decide(*, fast_srtt_us: int, fast_cwnd_bytes: int, slow_srtt_us: int, slow_cwnd_bytes: int,
               delta_us: int, unsent: int, waiting: bool) -> str:
    """ECF's Algorithm 1 in bpf/sched/ecf.bpf.c when the fast subflow cannot
    send: "slow" (use it), "wait" (waiting := 1) or "slow-reset" (waiting := 0)."""
    beta_div = 4
    cwnd_f = fast_cwnd_bytes or 1
    cwnd_s = slow_cwnd_bytes or 1
    lhs = (cwnd_f + unsent) * fast_srtt_us * beta_div
    rhs = (beta_div + (1 if waiting else 0)) * (slow_srtt_us + delta_us) * cwnd_f
    if lhs < rhs:
        if unsent * slow_srtt_us >= (2 * fast_srtt_us + delta_us) * cwnd_s:
            return "wait"
        return "slow"
    return "slow-reset"
