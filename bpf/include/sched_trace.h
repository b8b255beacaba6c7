/* One decision of an MPTCP packet scheduler, as bpf/sched_trace.bpf.c sends it
 * through its ring buffer. The single copy of this layout: bpfkit/sched_trace.py
 * mirrors it and checks every record's size against it. */
#ifndef BPFKIT_SCHED_TRACE_H
#define BPFKIT_SCHED_TRACE_H

#define TRACE_MAX_SUBFLOWS 8
#define TRACE_SCHED_NAME_LEN 16 /* MPTCP_SCHED_NAME_MAX */

#define TRACE_GET_SEND 1
#define TRACE_GET_RETRANS 2

struct sched_decision_subflow {
	__u32 id;          /* subflow_id: 1 for the initial subflow */
	__u32 srtt_us;     /* smoothed RTT, microseconds */
	__u32 cwnd;        /* congestion window, segments */
	__u32 in_flight;   /* packets_out, segments */
	__u32 queued;      /* write_seq - snd_una: bytes written, not yet acked */
	__u32 snd_wnd;     /* peer's receive window, bytes */
	__u32 mss;         /* mss_cache, bytes */
	__u8 scheduled;    /* picked by this call */
	__u8 backup;
	__u8 stale;
	__u8 state;        /* TCP state (1 = ESTABLISHED) */
};

struct sched_decision {
	__u64 time_ns;     /* bpf_ktime_get_ns() at the call's return */
	__u64 duration_ns; /* the scheduler's call, entry to return */
	__u32 token;       /* the MPTCP connection's local token */
	__s32 ret;         /* what get_send / get_retrans returned */
	__u8 kind;         /* TRACE_GET_SEND or TRACE_GET_RETRANS */
	__u8 nr_subflows;  /* subflows in the connection (up to TRACE_MAX_SUBFLOWS described) */
	__u8 pad[6];
	char sched[TRACE_SCHED_NAME_LEN];
	struct sched_decision_subflow subflows[TRACE_MAX_SUBFLOWS];
};

#endif
