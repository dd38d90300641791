# The host of the microVM end-to-end test (crates/bridge/tests/microvm.rs). The test runs
# what this configuration generates, unchanged: credproxy's config (and policy directory),
# VM a's listener, the vhost-device-vsock command line and QEMU's vsock arguments, the guest
# bridge's command line, and the agent's environment. Paths the test owns and addresses it
# picks are parameters (`--argstr runDir DIR` ...).
#
# Two VMs: `a` boots in the test (QEMU with vhost-user-vsock, served by vhost-device-vsock:
# the hybrid-vsock contract, as there is no /dev/vhost-vsock on CI machines), and the host
# reaches its gateway; `b` only has a listener, an identity and a credential of its own,
# which VM a must not be able to use.
# Identities come from the real OIDC provider the test starts (client credentials, client
# secrets on the host).
{
  runDir ? "/run/credproxy-microvm-test",
  issuer ? "http://127.0.0.1:1",
  upstreamCa ? "/dev/null",
  upstreamAddr ? "127.0.0.1:1",
  # The host's loopback port for VM a's gateway; 0: chosen by the OS when it binds.
  gatewayHostPort ? 0,
}: {
  lib,
  pkgs,
  ...
}: let
  credentials = "${runDir}/credentials";
  vm = name: cid: credential: {
    inherit cid;
    agentId = "vm-${name}";
    memory = 256;
    vcpus = 1;
    proxy.transport = "vsock_uds";
    identity = {
      inherit issuer;
      clientSecretFile = "${runDir}/secrets/vm-${name}-client-secret";
    };
    allowedDomains = ["api.anthropic.com"];
    credentials = credential;
    stateVolumeSize = null;
    config = {
      # The test's guest is a busybox initramfs with the static bridge, a client playing
      # the agent and busybox httpd playing the gateway (OpenClaw itself is not run).
      microvm.qemu.machine = "q35";
      services.openclaw-guest.package = pkgs.standIn.package "openclaw" {};
    };
  };
in {
  networking.hostName = "microvm-test";
  system.stateVersion = "25.11";

  services.credproxy = {
    credentialsDirectory = credentials;
    loadCredential = {
      anthropic-a = "${runDir}/secrets/anthropic-a";
      anthropic-b = "${runDir}/secrets/anthropic-b";
    };
    settings = {
      identity.oidc = {
        inherit issuer;
        audiences = ["credproxy"];
        # The test provider's client-credentials tokens name the client in `client_id`
        # (RFC 9068); Keycloak's carry `azp`, the default.
        agent_claim = "client_id";
      };
      ca = {
        cert_file = "${runDir}/ca/ca.crt";
        key_file = "${runDir}/ca/ca.key";
      };
      admin.tcp = null;
      audit.path = "${runDir}/audit.db";
      upstream = {
        extra_ca_files = [upstreamCa];
        resolve."api.anthropic.com" = upstreamAddr;
      };
      limits.shutdown_grace = "1s";
    };
  };

  services.openclaw-vm = {
    enable = true;
    runtimeDir = "${runDir}/run";
    vms.a = lib.recursiveUpdate (vm "a" 3 {
      anthropic-a = {
        placeholder = "agent-vault-00000000-0000-0000-0000-0000000000a1";
        envVar = "ANTHROPIC_API_KEY";
        settings = {
          type = "api_key";
          header_name = "x-api-key";
          bound_domains = ["api.anthropic.com"];
          allowed_roles = ["proxy-user"];
          source.file = "${credentials}/anthropic-a";
        };
      };
    }) {gateway.hostPort = gatewayHostPort;};
    vms.b = vm "b" 4 {
      anthropic-b = {
        placeholder = "agent-vault-00000000-0000-0000-0000-0000000000b2";
        envVar = "ANTHROPIC_API_KEY";
        settings = {
          type = "api_key";
          header_name = "x-api-key";
          bound_domains = ["api.anthropic.com"];
          allowed_roles = ["proxy-user"];
          source.file = "${credentials}/anthropic-b";
        };
      };
    };
  };
}
