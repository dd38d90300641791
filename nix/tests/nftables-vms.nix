# The VMs whose lockdown the nftables tests check: one with DNS, one with Tailscale.
[
  {
    tap = "vm-agent1";
    hostAddress = "10.88.1.1";
    allowDns = true;
    tailscaleInterface = null;
  }
  {
    tap = "vm-agent2";
    hostAddress = "10.88.2.1";
    allowDns = false;
    tailscaleInterface = "tailscale0";
  }
]
