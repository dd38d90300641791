# (c) The TAP lockdown loaded into a real kernel. A veth pair stands in for each TAP: its far
# end lives in a network namespace that plays the VM. Checks the loaded ruleset against the
# golden string, then behaviour: DNS to the host is the only thing agent1 may open; agent2 may
# reach nothing on the host; the host cannot open connections into a VM.
{
  pkgs,
  cplib,
  ...
}: let
  vms = import ./nftables-vms.nix;
in {
  name = "openclaw-vm-nftables";

  nodes.host = {...}: {
    networking.nftables = {
      enable = true;
      tables.openclaw-vm = {
        family = "inet";
        content = cplib.nftRuleset vms;
      };
    };
    networking.firewall.enable = false;
    environment.systemPackages = [pkgs.socat pkgs.netcat-openbsd pkgs.iproute2];
  };

  testScript = ''
    import re

    host.wait_for_unit("nftables.service")

    # The loaded table, normalised, contains every rule of the golden ruleset in order.
    loaded = host.succeed("nft list table inet openclaw-vm")
    expected = open("${./nftables-expected.nft}").read()
    def norm(s):
        s = re.sub(r"counter packets \d+ bytes \d+", "counter", s)
        return [l.strip() for l in s.splitlines() if l.strip() and not l.strip().startswith("table")]
    exp = [l for l in norm(expected) if l != "}"]
    got = norm(loaded)
    pos = 0
    for rule in exp:
        # nft prints "priority filter - 10" as "priority filter - 10" and sets with spaces.
        key = rule.replace('"', "")
        while pos < len(got) and key not in got[pos].replace('"', ""):
            pos += 1
        assert pos < len(got), f"rule missing or out of order: {rule}\n{loaded}"
        pos += 1

    # Two "VMs": namespaces behind veth pairs named like the TAPs.
    for name, host_ip, vm_ip in [("vm-agent1", "10.88.1.1", "10.88.1.2"), ("vm-agent2", "10.88.2.1", "10.88.2.2")]:
        ns = name.replace("vm-", "ns-")
        host.succeed(
            f"ip netns add {ns}",
            f"ip link add {name} type veth peer name eth0 netns {ns}",
            f"ip addr add {host_ip}/24 dev {name}",
            f"ip link set {name} up",
            f"ip -n {ns} addr add {vm_ip}/24 dev eth0",
            f"ip -n {ns} link set eth0 up",
            f"ip -n {ns} link set lo up",
        )

    # Host services: a "DNS" port and an arbitrary one, on all addresses.
    host.succeed("systemd-run --unit fake-dns socat TCP-LISTEN:53,fork,reuseaddr EXEC:'echo dns'")
    host.succeed("systemd-run --unit other socat TCP-LISTEN:8080,fork,reuseaddr EXEC:'echo other'")
    host.wait_for_open_port(53)
    host.wait_for_open_port(8080)

    # agent1: DNS to its host address only.
    host.succeed("ip netns exec ns-agent1 nc -w 3 10.88.1.1 53 </dev/null | grep -q dns")
    host.fail("ip netns exec ns-agent1 nc -w 3 10.88.1.1 8080 </dev/null | grep -q other")
    host.fail("ip netns exec ns-agent1 nc -w 3 10.88.2.1 53 </dev/null | grep -q dns")
    # agent2: nothing on the host.
    host.fail("ip netns exec ns-agent2 nc -w 3 10.88.2.1 53 </dev/null | grep -q dns")
    host.fail("ip netns exec ns-agent2 ping -c1 -W2 10.88.2.1")

    # Host -> VM: no new connections.
    host.succeed("systemd-run --unit vm-listener ip netns exec ns-agent1 socat TCP-LISTEN:22,fork,reuseaddr EXEC:'echo vm'")
    host.fail("nc -w 3 10.88.1.2 22 </dev/null | grep -q vm")

    # The drops were counted.
    host.succeed("nft list chain inet openclaw-vm input | grep -E 'counter packets [1-9]'")
  '';
}
