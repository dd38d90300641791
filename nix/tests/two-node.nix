# (b) Without microVMs: an agent user on `client` whose only route out is credproxy (nftables
# by uid) calls an HTTPS API on `upstream` with a placeholder, authenticated with a token from
# credproxy's dev issuer. The upstream must receive the real secret; the agent must get the
# placeholder back wherever the upstream echoes it.
{
  pkgs,
  self,
  ...
}: let
  placeholder = "agent-vault-00000000-0000-0000-0000-000000000001";
  secret = "real-secret-8d1f0c2e";
  devState = "/var/lib/credproxy/dev";
  # A throwaway CA and a leaf for the upstream, made at build time (public test material).
  certs = pkgs.runCommand "credproxy-test-certs" {nativeBuildInputs = [pkgs.openssl];} ''
    mkdir $out && cd $out
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj /CN=test-upstream-ca -keyout ca.key -out ca.crt
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj /CN=api.example.test -keyout leaf.key -out leaf.csr
    printf 'subjectAltName=DNS:api.example.test\n' > ext
    openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile ext -out leaf.crt
  '';
in {
  name = "credproxy-two-node";

  nodes.upstream = {...}: {
    networking.firewall.allowedTCPPorts = [443];
    services.nginx = {
      enable = true;
      # The secret lands in the access log: that is the upstream's proof of injection.
      commonHttpConfig = ''log_format auth '$http_authorization';'';
      virtualHosts."api.example.test" = {
        onlySSL = true;
        sslCertificate = "${certs}/leaf.crt";
        sslCertificateKey = "${certs}/leaf.key";
        extraConfig = "access_log /var/log/nginx/auth.log auth;";
        # Echo the header in a response header and in the body.
        locations."/echo".extraConfig = ''
          add_header X-Echo $http_authorization always;
          return 200 "auth=$http_authorization\n";
        '';
      };
    };
  };

  nodes.client = {nodes, ...}: {
    imports = [self.nixosModules.credproxy];
    users.users.agent = {
      isNormalUser = true;
      # By number in the ruleset below, so the ruleset also loads where no "agent" exists
      # (nft resolves user names when it parses).
      uid = 1500;
    };
    # The secret file is test data; in production it comes from sops/agenix/OpenBao.
    systemd.tmpfiles.rules = ["f /run/keys/upstream-secret 0400 root root - ${secret}"];
    services.credproxy = {
      enable = true;
      loadCredential.upstream = "/run/keys/upstream-secret";
      settings = {
        listeners = [
          {
            name = "agents";
            tcp = "127.0.0.1:18790";
          }
          # Makes credproxy create (and trust) the dev issuer's key, with which the test
          # mints the agent's token (`credproxy token --dev`).
          {
            name = "dev-key";
            unix = "/run/credproxy/dev.sock";
            # agent_token on a unix listener names who may connect (SO_PEERCRED): root only.
            peer_uids = [0];
            agent = "agent";
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
        allowed_domains = ["api.example.test"];
        upstream = {
          extra_ca_files = ["${certs}/ca.crt"];
          resolve."api.example.test" = "${nodes.upstream.networking.primaryIPAddress}:443";
          allow_private_networks = ["${nodes.upstream.networking.primaryIPAddress}/32"];
        };
        credentials = [
          {
            id = "upstream";
            inherit placeholder;
            type = "bearer";
            header_name = "Authorization";
            bound_domains = ["api.example.test"];
            allowed_roles = ["proxy-user"];
            source.file = "/run/credentials/credproxy.service/upstream";
          }
        ];
      };
    };
    systemd.services.credproxy.after = ["systemd-tmpfiles-setup.service"];
    # The agent's only route: loopback to the proxy port. credproxy itself may go out.
    networking.nftables = {
      enable = true;
      tables.agent-lockdown = {
        family = "inet";
        content = ''
          chain output {
            type filter hook output priority filter; policy accept;
            meta skuid != 1500 accept
            oifname "lo" tcp dport 18790 accept
            oifname "lo" udp dport 53 accept
            counter drop
          }
        '';
      };
    };
  };

  testScript = ''
    start_all()
    upstream.wait_for_unit("nginx.service")
    upstream.wait_for_open_port(443)
    client.wait_for_unit("credproxy.service")

    ca = "/var/lib/credproxy-public/ca.crt"

    # The agent cannot reach the upstream directly.
    client.fail("sudo -u agent curl -sS --max-time 5 --cacert ${certs}/ca.crt https://api.example.test/echo --resolve api.example.test:443:$(getent hosts upstream | cut -d' ' -f1)")

    # The agent's token (dev issuer), as a proxy URL: http://agent:<jwt>@127.0.0.1:18790.
    proxy = client.succeed("credproxy token --dev --state-dir ${devState} --agent agent --role proxy-user --proxy-url http://127.0.0.1:18790").strip()

    # Through the proxy: injected upstream, scrubbed on the way back (body and headers).
    out = client.succeed(f"sudo -u agent curl -sS -D - --cacert {ca} --proxy '{proxy}' -H 'Authorization: Bearer ${placeholder}' https://api.example.test/echo")
    assert "${secret}" not in out, out
    assert "${placeholder}" in out, out
    upstream.succeed("grep -q 'Bearer ${secret}' /var/log/nginx/auth.log")

    # The proxy never logs the secret.
    client.fail("journalctl -u credproxy --no-pager | grep -q '${secret}'")
  '';
}
