# The VMs whose lockdown the nftables tests check: one with DNS, one with Tailscale.
[
  {
    tap = "vm-agent1";
    hostAddress = "10.88.1.1";
    allowDns = true;
    tailscale = null;
  }
  {
    tap = "vm-agent2";
    hostAddress = "10.88.2.1";
    allowDns = false;
    tailscale = {
      interface = "tailscale0";
      destinations = ["100.64.0.0/10" "fd7a:115c:a1e0::/48"];
    };
  }
]
