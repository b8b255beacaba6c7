# shellcheck shell=bash
# A stand-in for the part of the mptcp/mptcp-upstream-virtme-docker guest test
# script that .virtme-exec-run relies on: `run_cmd CMD...` runs CMD as one TAP
# test named after basename(CMD), prefixes CMD's output with "# ", and turns
# its exit code into the verdict the way the image does:
#   0 ok · 1 not ok # FAIL · 2 not ok # XFAIL · 3 not ok # XPASS
#   4 ok # SKIP (not ok # SKIP when SELFTESTS_MPTCP_LIB_EXPECT_ALL_FEATURES=1)
#   other: not ok # FAIL # exit=N
# Each result also goes to ${RESULTS_DIR}/<name>.tap, as in the image.

run_cmd() {
	local name status verdict note=""
	name="cmd_$(basename "${1}")_$(mktemp -u XXXXXX)"
	echo "TAP version 13"
	echo "1..1"
	"${@}" 2>&1 | sed 's/^/# /'
	status=${PIPESTATUS[0]}
	verdict="ok 1 test: ${name}"
	case "${status}" in
	0) ;;
	1) verdict="not ${verdict}" note="FAIL" ;;
	2) verdict="not ${verdict}" note="XFAIL" ;;
	3) verdict="not ${verdict}" note="XPASS" ;;
	4)
		note="SKIP"
		if [ "${SELFTESTS_MPTCP_LIB_EXPECT_ALL_FEATURES:-}" = "1" ]; then
			verdict="not ${verdict}"
		fi
		;;
	*) verdict="not ${verdict}" note="FAIL # exit=${status}" ;;
	esac
	echo "${verdict}${note:+ # ${note}}" | tee -a "${RESULTS_DIR}/${name}.tap"
	return "${status}"
}
