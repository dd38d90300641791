# nixosConfigurations.test-vm: a development host with one agent VM (QEMU, VSOCK only) that
# can use a seeded dummy credential for httpbin.org through credproxy, authenticated as agent1
# by credproxy's dev issuer. Everything runs in dangerousDevMode: never put real credentials
# here.
{
  lib,
  pkgs,
  modulesPath,
  ...
}: {
  imports = ["${modulesPath}/virtualisation/qemu-vm.nix"];

  networking.hostName = "openclaw-test-host";
  system.stateVersion = "25.11";

  # A host that is itself a VM (`nix run .#test-host`): nested QEMU for the agent.
  virtualisation = {
    memorySize = 6144;
    cores = 4;
    diskSize = 16384;
  };
  boot.kernelModules = ["kvm-intel" "kvm-amd"];
  systemd.network.enable = true;
  networking.useNetworkd = true;

  services.openclaw-vm = {
    enable = true;
    dangerousDevMode.enable = true;
    vms.agent1 = {
      cid = 4;
      # Not 2048: QEMU hangs with exactly 2 GiB (microvm.nix issue 171).
      memory = 2560;
      vcpus = 2;
      allowedDomains = ["httpbin.org"];
      gateway.hostPort = 18789;
      credentials.httpbin = {
        placeholder = "agent-vault-00000000-0000-0000-0000-000000000001";
        envVar = "HTTPBIN_API_KEY";
        devDummyValue = "dummy-httpbin-key-not-a-secret";
        settings = {
          type = "bearer";
          header_name = "Authorization";
          bound_domains = ["httpbin.org"];
          # The dev issuer gives agent1 this role (identity.devRoles' default).
          allowed_roles = ["proxy-user"];
          source.openbao = {
            path = "openclaw/credentials/httpbin";
            field = "key";
          };
        };
      };
      # OpenClaw is not in nixpkgs: bring it from the nix-openclaw flake. The test VM runs
      # without it (credproxy-guest and a shell are enough to try the proxy).
      config = {
        services.openclaw-guest.enable = lib.mkForce false;
        users.users.openclaw = {
          isNormalUser = true;
          extraGroups = ["openclaw-shared"];
        };
        users.groups.openclaw-shared = {};
        environment.systemPackages = [pkgs.curl];
      };
    };
  };
}
