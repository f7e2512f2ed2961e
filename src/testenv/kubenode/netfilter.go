package kubenode

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

const (
	// guardChain drops whatever a pod sends towards anything but the pod
	// network: the node forwards packets (the kubelet needs ip_forward), and
	// this keeps pod traffic from leaving the machine. It sits in the mangle
	// table, which packets pass before any filter rule kube-proxy adds.
	guardChain = "PMPH-KUBENODE-GUARD"
	// knpTable is the nftables table kube-network-policies creates.
	knpTable = "kube-network-policies"
	// kubeRouterTmpSet starts the name of the sets kube-router fills and
	// swaps in for its own; a crash between the two leaves one behind.
	kubeRouterTmpSet = "TMP-"
	// ipv6SetPrefix starts the name of every IPv6 set kube-router makes.
	ipv6SetPrefix = "inet6:"
	ipForward     = "/proc/sys/net/ipv4/ip_forward"
	iptables      = "iptables"
	ip6tables     = "ip6tables"
	tableMangle   = "mangle"
)

var netfilterTables = []string{"filter", "nat", tableMangle, "raw"}

// setPrefixes name the ipsets a node creates: kube-router's sets of pod and
// block addresses, and the harness's probe.
var setPrefixes = []string{"KUBE-SRC-", "KUBE-DST-", probeSet}

func runCmd(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s failed (%v): %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// installGuard adds the rule that drops pod traffic leaving through any
// interface but the bridge.
func installGuard() error {
	if err := runCmd(iptables, "-t", tableMangle, "-N", guardChain); err != nil {
		return err
	}
	if err := runCmd(iptables, "-t", tableMangle, "-A", guardChain,
		"-i", bridgeName, "!", "-o", bridgeName, "-j", "DROP",
		"-m", "comment", "--comment", "pod traffic stays on this machine"); err != nil {
		return err
	}
	return runCmd(iptables, "-t", tableMangle, "-I", "FORWARD", "1", "-j", guardChain)
}

// enableForwarding turns on IPv4 forwarding and returns the previous value
// for Stop to restore.
func enableForwarding() (string, error) {
	old, err := os.ReadFile(ipForward)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %w", ipForward, err)
	}
	if err := os.WriteFile(ipForward, []byte("1"), 0o644); err != nil {
		return "", fmt.Errorf("cannot enable IP forwarding in %s: %w", ipForward, err)
	}
	return strings.TrimSpace(string(old)), nil
}

func restoreForwarding(old string) error {
	if old == "" {
		return nil
	}
	return os.WriteFile(ipForward, []byte(old), 0o644)
}

// cleanNetfilter removes kube-proxy's rules (with its own --cleanup), then
// every chain with one of chainPrefixes in every table of iptables and
// ip6tables (the kubelet's KUBE-KUBELET-CANARY and KUBE-FIREWALL,
// kube-proxy's KUBE-IPTABLES-HINT, kube-router's KUBE-ROUTER-, KUBE-POD-FW-
// and KUBE-NWPLCY- chains, the portmap plugin's CNI- chains, the guard)
// together with the rules that jump to them, the nftables table of
// kube-network-policies, and, once no rule refers to them, kube-router's
// ipsets.
func cleanNetfilter(toolsBin string) error {
	var errs []error
	if proxy := filepath.Join(toolsBin, "kube-proxy"); isExecutable(proxy) {
		// --cleanup exits non-zero when it had nothing to clean; what it
		// missed, the loop below removes.
		_ = exec.Command(proxy, "--cleanup").Run()
	}
	for _, cmd := range []string{iptables, ip6tables} {
		if _, err := exec.LookPath(cmd); err != nil {
			continue
		}
		for _, table := range netfilterTables {
			if err := cleanTable(cmd, table); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		for _, family := range []string{"inet", "ip", "ip6"} {
			_ = exec.Command("nft", "delete", "table", family, knpTable).Run()
		}
	}
	errs = append(errs, destroySets())
	return errors.Join(errs...)
}

// destroySets destroys the node's ipsets. The kernel refuses to destroy a
// set an iptables rule still matches, so it runs after the chains are gone.
func destroySets() error {
	var errs []error
	for _, name := range leftoverSets() {
		if err := runCmd("ipset", "destroy", name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// leftoverSets lists the ipsets the node creates that exist.
func leftoverSets() []string {
	if _, err := exec.LookPath("ipset"); err != nil {
		return nil
	}
	out, err := exec.Command("ipset", "list", "-n").Output()
	if err != nil {
		return nil
	}
	var ours []string
	for name := range strings.FieldsSeq(string(out)) {
		if ownSet(name) {
			ours = append(ours, name)
		}
	}
	return ours
}

// ownSet reports whether an ipset is one the node creates. kube-router's
// swap sets are TMP- and 16 base32 letters, which keeps other programs' TMP-
// sets out.
func ownSet(name string) bool {
	name = strings.TrimPrefix(name, ipv6SetPrefix)
	for _, p := range setPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	rest, ok := strings.CutPrefix(name, kubeRouterTmpSet)
	return ok && len(rest) == 16 && strings.Trim(rest, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") == ""
}

// cleanTable deletes the jumps to our chains from the other chains, then
// flushes and deletes our chains.
func cleanTable(cmd, table string) error {
	out, err := exec.Command(cmd, "-t", table, "-S").Output()
	if err != nil {
		// A table the kernel does not have (raw in some ip6tables builds).
		return nil
	}
	var ours []string
	var jumps [][]string
	for line := range strings.Lines(string(out)) {
		args := splitRule(strings.TrimSpace(line))
		if len(args) < 2 {
			continue
		}
		switch args[0] {
		case "-N":
			if ownChain(args[1]) {
				ours = append(ours, args[1])
			}
		case "-A":
			if !ownChain(args[1]) && jumpsToOwn(args) {
				jumps = append(jumps, args)
			}
		}
	}
	var errs []error
	for _, rule := range jumps {
		rule[0] = "-D"
		if err := runCmd(cmd, append([]string{"-t", table}, rule...)...); err != nil {
			errs = append(errs, err)
		}
	}
	for _, chain := range ours {
		if err := runCmd(cmd, "-t", table, "-F", chain); err != nil {
			errs = append(errs, err)
		}
	}
	for _, chain := range ours {
		if err := runCmd(cmd, "-t", table, "-X", chain); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func ownChain(name string) bool {
	for _, p := range chainPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func jumpsToOwn(args []string) bool {
	for i := 0; i+1 < len(args); i++ {
		if (args[i] == "-j" || args[i] == "-g") && ownChain(args[i+1]) {
			return true
		}
	}
	return false
}

// splitRule splits a line of `iptables -S` into arguments; iptables quotes
// arguments with spaces (comments) in double quotes.
func splitRule(line string) []string {
	var args []string
	var cur strings.Builder
	inQuote, inArg := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			inArg = true
		case c == ' ' && !inQuote:
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}

// leftoverChains lists the chains with one of chainPrefixes that exist in
// any table, as "iptables/table/chain".
func leftoverChains() []string {
	var left []string
	for _, cmd := range []string{iptables, ip6tables} {
		for _, table := range netfilterTables {
			out, err := exec.Command(cmd, "-t", table, "-S").Output()
			if err != nil {
				continue
			}
			for line := range strings.Lines(string(out)) {
				args := splitRule(strings.TrimSpace(line))
				if len(args) == 2 && args[0] == "-N" && ownChain(args[1]) {
					left = append(left, cmd+"/"+table+"/"+args[1])
				}
			}
		}
	}
	return left
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}
