# (a) The host service: starts (Type=notify), its generated config passes check-config, the
# CA is generated with the right owner and modes, only the certificate is published, the
# admin listener answers, and a reload keeps the process.
{self, ...}: {
  name = "credproxy-service";

  nodes.machine = {...}: {
    imports = [self.nixosModules.credproxy];
    services.credproxy = {
      enable = true;
      settings = {
        listeners = [
          {
            name = "local";
            tcp = "127.0.0.1:18790";
          }
        ];
        allowed_domains = ["example.com"];
      };
    };
  };

  testScript = ''
    machine.wait_for_unit("credproxy.service")
    machine.succeed("credproxy check-config /etc/credproxy/config.yaml")

    # CA: key 0400 owned by the service user; only the certificate is public.
    machine.succeed("test \"$(stat -c '%a %U' /var/lib/credproxy/ca/ca.key)\" = '400 credproxy'")
    machine.succeed("test \"$(stat -c '%a' /var/lib/credproxy-public/ca.crt)\" = '444'")
    machine.succeed("test \"$(stat -c '%a' /var/lib/credproxy)\" = '750'")
    machine.fail("sudo -u nobody cat /var/lib/credproxy/ca/ca.key")
    machine.succeed("sudo -u nobody cat /var/lib/credproxy-public/ca.crt")

    # Admin endpoints.
    machine.wait_until_succeeds("curl -sf http://127.0.0.1:18791/healthz")
    machine.succeed("curl -sf http://127.0.0.1:18791/readyz")
    machine.succeed("curl -sf http://127.0.0.1:18791/metrics | grep -q '^# TYPE'")

    # Hardening as declared: no AF_VSOCK without a vsock listener, notify, no capabilities.
    props = machine.succeed("systemctl show credproxy -p Type -p RestrictAddressFamilies -p CapabilityBoundingSet -p User")
    assert "Type=notify" in props, props
    assert "AF_VSOCK" not in props, props
    assert "User=credproxy" in props, props

    # A denied destination is refused by the proxy with a readable body.
    out = machine.succeed("curl -s -o /dev/null -w '%{http_code}' -x http://127.0.0.1:18790 https://not-allowed.test/ || true")
    assert out.strip() in ("403", "407"), out

    # Reload (SIGHUP) keeps the same process.
    pid = machine.succeed("systemctl show -p MainPID --value credproxy").strip()
    machine.succeed("systemctl reload credproxy")
    machine.wait_for_unit("credproxy.service")
    assert machine.succeed("systemctl show -p MainPID --value credproxy").strip() == pid
  '';
}
