# (a) The host service: starts (Type=notify), its generated config passes check-config, the
# CA is generated with the right owner and modes, only the certificate is published, the
# admin listener answers, agents are authenticated (a dev-issuer token is accepted, none is
# refused), a reload keeps the process and a listener change restarts it.
{self, ...}: let
  # credproxy creates the dev issuer's key here (0600) for the listener below and trusts it;
  # `credproxy token --dev --state-dir /var/lib/credproxy/dev` mints tokens with it.
  devState = "/var/lib/credproxy/dev";
in {
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
          {
            name = "agent";
            unix = "/run/credproxy/agent.sock";
            # agent_token on a unix listener names who may connect (SO_PEERCRED): root only.
            peer_uids = [0];
            agent = "test-agent";
            agent_token.dev_issuer = {
              key_file = "${devState}/identity/dev-issuer-key.pem";
              roles = ["proxy-user"];
            };
          }
        ];
        identity.oidc = {
          issuer = "credproxy-dev";
          audiences = ["credproxy"];
        };
        allowed_domains = ["example.com"];
      };
    };
  };

  testScript = ''
    machine.wait_for_unit("credproxy.service")
    # On PATH, and the generated config is valid.
    machine.succeed("credproxy check-config /etc/credproxy/config.yaml")

    # CA: key 0400 owned by the service user; only the certificate is public.
    machine.succeed("test \"$(stat -c '%a %U' /var/lib/credproxy/ca/ca.key)\" = '400 credproxy'")
    machine.succeed("test \"$(stat -c '%a' /var/lib/credproxy-public/ca.crt)\" = '444'")
    machine.succeed("test \"$(stat -c '%a' /var/lib/credproxy)\" = '750'")
    machine.fail("sudo -u nobody cat /var/lib/credproxy/ca/ca.key")
    machine.succeed("sudo -u nobody cat /var/lib/credproxy-public/ca.crt")
    # The dev issuer's key is private too.
    machine.succeed("test \"$(stat -c '%a %U' ${devState}/identity/dev-issuer-key.pem)\" = '600 credproxy'")

    # Admin endpoints.
    machine.wait_until_succeeds("curl -sf http://127.0.0.1:18791/healthz")
    machine.succeed("curl -sf http://127.0.0.1:18791/readyz")
    machine.succeed("curl -sf http://127.0.0.1:18791/metrics | grep -q '^# TYPE'")

    # Hardening as declared: no AF_VSOCK without a vsock listener, notify, no capabilities.
    props = machine.succeed("systemctl show credproxy -p Type -p RestrictAddressFamilies -p CapabilityBoundingSet -p User")
    assert "Type=notify" in props, props
    assert "AF_VSOCK" not in props, props
    assert "User=credproxy" in props, props

    # Without a token: 407. With a dev-issuer token for a host not on the allowlist: 403.
    out = machine.succeed("curl -s -o /dev/null -w '%{http_code}' -x http://127.0.0.1:18790 https://example.com/ || true")
    assert out.strip() == "407", out
    url = machine.succeed("credproxy token --dev --state-dir ${devState} --agent test-agent --role proxy-user --proxy-url http://127.0.0.1:18790").strip()
    out = machine.succeed(f"curl -s -o /dev/null -w '%{{http_code}}' -x '{url}' https://not-allowed.test/ || true")
    assert out.strip() == "403", out

    # Reload (SIGHUP) keeps the same process.
    pid = machine.succeed("systemctl show -p MainPID --value credproxy").strip()
    machine.succeed("systemctl reload credproxy")
    machine.wait_for_unit("credproxy.service")
    assert machine.succeed("systemctl show -p MainPID --value credproxy").strip() == pid
  '';
}
