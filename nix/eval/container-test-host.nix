# The host of the container end-to-end test (crates/cli/tests/containers.rs). The test runs
# what this configuration generates: credproxy's config (and policy directory), each
# instance's `podman run` arguments (with the substitutions it lists: its own Podman storage,
# runc, rootful uid maps standing in for rootless keep-id, its own image), the hub's command
# line and the host's gateway bridge. Paths the test owns and addresses it picks are
# parameters (`--argstr runDir DIR` ...).
#
# Two instances, `a` and `b`, each with its own identity (client credentials from the real
# OIDC provider the test starts), listener and credential; the hub between them.
{
  runDir ? "/run/credproxy-container-test",
  issuer ? "http://127.0.0.1:1",
  upstreamCa ? "/dev/null",
  upstreamAddr ? "127.0.0.1:1",
  # The host's loopback port for a's gateway; 0: chosen by the OS when it binds.
  gatewayHostPort ? 0,
}: {pkgs, ...}: let
  credentials = "${runDir}/credentials";
  instance = name: placeholder: {
    agentId = "inst-${name}";
    identity = {
      inherit issuer;
      clientSecretFile = "${runDir}/secrets/inst-${name}-client-secret";
    };
    allowedDomains = ["api.anthropic.com"];
    credentials."anthropic-${name}" = {
      inherit placeholder;
      envVar = "ANTHROPIC_API_KEY";
      settings = {
        type = "api_key";
        header_name = "x-api-key";
        bound_domains = ["api.anthropic.com"];
        # A role of its own per instance (the test's provider grants inst-<name> to the
        # instance's client only): another instance's placeholder is a credential it holds
        # no role for.
        allowed_roles = ["inst-${name}"];
        source.file = "${credentials}/anthropic-${name}";
      };
    };
  };
in {
  networking.hostName = "container-test";
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
        # The test provider's client-credentials tokens name the client in `client_id`.
        agent_claim = "client_id";
      };
      ca = {
        cert_file = "${runDir}/ca/ca.crt";
        key_file = "${runDir}/ca/ca.key";
      };
      admin.tcp = "127.0.0.1:0";
      audit.path = "${runDir}/audit.db";
      upstream = {
        extra_ca_files = [upstreamCa];
        resolve."api.anthropic.com" = upstreamAddr;
      };
      limits.shutdown_grace = "1s";
    };
  };

  services.openclaw-containers = {
    enable = true;
    # The test's image is a busybox root with static binaries; OpenClaw itself is mounted in.
    openclawPackage = pkgs.standIn.package "openclaw" {};
    runtimeDir = "${runDir}/run";
    stateDir = "${runDir}/state";
    hub = {
      socket = "${runDir}/hub/hub.sock";
      stateDir = "${runDir}/hub-state";
      auditLog = "${runDir}/hub-log/audit.jsonl";
      maxDelegationDepth = 1;
      # A third agent the hub knows (no container): the target of a chain past the depth.
      extraInstances = ["inst-c"];
    };
    instances = {
      a = instance "a" "agent-vault-00000000-0000-0000-0000-0000000000c1" // {ports.gateway = gatewayHostPort;};
      b = instance "b" "agent-vault-00000000-0000-0000-0000-0000000000c2";
    };
  };
}
