package kubenode

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

const (
	// bridgeName is the pod network's bridge, created by the CNI bridge plugin.
	bridgeName = "pmphbr0"
	// dummyName carries the node's own address.
	dummyName = "pmph0"
	// serviceCIDR is kubetest's --service-cluster-ip-range; the "kubernetes"
	// Service takes its first address and cluster DNS the tenth.
	serviceCIDR      = "10.0.0.0/24"
	kubernetesSvcIP  = "10.0.0.1"
	clusterDNSIP     = "10.0.0.10"
	clusterDomain    = "cluster.local"
	cniNetworkName   = "pmph-kubenode"
	firstCandidate16 = 244
	lastCandidate16  = 254
)

// addressing is the node's address and its pod subnet, both inside one /16
// of 10.0.0.0/8 that no route or address of the machine overlaps.
type addressing struct {
	nodeIP  netip.Addr
	podCIDR netip.Prefix
	gateway netip.Addr
}

// pickAddressing chooses the first 10.N.0.0/16 (N from 244) that overlaps
// none of the machine's routes and addresses: the pod subnet is 10.N.0.0/24
// and the node's address 10.N.255.1.
func pickAddressing() (addressing, error) {
	used, err := usedPrefixes()
	if err != nil {
		return addressing{}, err
	}
	for n := firstCandidate16; n <= lastCandidate16; n++ {
		block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n), 0, 0}), 16)
		if overlapsAny(block, used) {
			continue
		}
		return addressing{
			nodeIP:  netip.AddrFrom4([4]byte{10, byte(n), 255, 1}),
			podCIDR: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n), 0, 0}), 24),
			gateway: netip.AddrFrom4([4]byte{10, byte(n), 0, 1}),
		}, nil
	}
	return addressing{}, fmt.Errorf("every candidate pod network 10.%d.0.0/16 to 10.%d.0.0/16 overlaps a route or address of this machine", firstCandidate16, lastCandidate16)
}

func overlapsAny(p netip.Prefix, used []netip.Prefix) bool {
	for _, u := range used {
		// A default route overlaps everything and says nothing about use.
		if u.Bits() > 0 && u.Overlaps(p) {
			return true
		}
	}
	return false
}

// usedPrefixes lists the IPv4 routes of the main table and the machine's
// addresses.
func usedPrefixes() ([]netip.Prefix, error) {
	var used []netip.Prefix
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("cannot list the machine's addresses: %w", err)
	}
	for _, a := range addrs {
		if ipnet, ok := a.(*net.IPNet); ok {
			if p, err := netip.ParsePrefix(ipnet.String()); err == nil && p.Addr().Is4() {
				used = append(used, p.Masked())
			}
		}
	}
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil, fmt.Errorf("cannot read the routing table: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[0] == "Iface" {
			continue
		}
		dst, err1 := hex.DecodeString(fields[1])
		mask, err2 := hex.DecodeString(fields[7])
		if err1 != nil || err2 != nil || len(dst) != 4 || len(mask) != 4 {
			continue
		}
		// /proc/net/route prints each address as a little-endian number.
		ip := netip.AddrFrom4([4]byte{dst[3], dst[2], dst[1], dst[0]})
		bits := 0
		for v := binary.BigEndian.Uint32([]byte{mask[3], mask[2], mask[1], mask[0]}); v != 0; v <<= 1 {
			bits++
		}
		used = append(used, netip.PrefixFrom(ip, bits).Masked())
	}
	return used, sc.Err()
}

// addDummy gives the node its own address on a dummy interface: the kubelet
// reports it as the node's InternalIP, which the API server dials for
// `kubectl logs`, `exec` and `port-forward`.
func addDummy(ip netip.Addr) error {
	if err := runCmd("ip", "link", "add", dummyName, "type", "dummy"); err != nil {
		return err
	}
	if err := runCmd("ip", "addr", "add", netip.PrefixFrom(ip, 32).String(), "dev", dummyName); err != nil {
		return err
	}
	return runCmd("ip", "link", "set", dummyName, "up")
}

// writeCNIConfig writes the pod network: a bridge with the gateway address,
// host-local addresses from the pod subnet (their state under dir), no
// masquerading (pods reach only the bridge and this machine), and portmap for
// hostPorts.
func writeCNIConfig(confDir, dataDir string, a addressing) error {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       cniNetworkName,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      bridgeName,
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": dataDir,
					"ranges":  [][]map[string]string{{{"subnet": a.podCIDR.String(), "gateway": a.gateway.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(confDir, "10-pmph-kubenode.conflist"), data, 0o644)
}
