# Host configurations the harness evaluates: a base production host, and the combinations
# issue 14 asks for. Each is a list of NixOS modules (the flake's nixosModules.default and
# microvm.nix's host module are added by nix/eval/default.nix).
{lib}: let
  # OpenClaw is not in nixpkgs: a stand-in package for the guests that run it.
  openclawPackage = {pkgs, ...}: {
    services.openclaw-guest.package = pkgs.standIn.package "openclaw" {};
  };

  credential = id: n: {
    placeholder = "agent-vault-00000000-0000-0000-0000-${lib.fixedWidthString 12 "0" (toString n)}";
    envVar = "${lib.toUpper id}_API_KEY";
    settings = {
      type = "api_key";
      header_name = "x-api-key";
      bound_domains = ["api.${id}.example"];
      allowed_roles = ["proxy-user"];
      source.openbao.path = "openclaw/credentials/${id}";
    };
    devDummyValue = "dummy-${id}-not-a-secret";
  };

  issuer = "https://id.example/realms/openclaw";

  # Production: a real identity provider, OpenBao with AppRole, one QEMU VM (AF_VSOCK).
  base = {
    networking.hostName = "prod";
    system.stateVersion = "25.11";
    services.credproxy = {
      loadCredential = {
        role-id = "/run/secrets/credproxy-role-id";
        secret-id = "/run/secrets/credproxy-secret-id";
      };
      settings = {
        identity.oidc.issuer = issuer;
        secrets.openbao = {
          address = "https://127.0.0.1:8200";
          auth.approle = {
            role_id_file = "/run/credentials/credproxy.service/role-id";
            secret_id_file = "/run/credentials/credproxy.service/secret-id";
          };
        };
      };
    };
    services.openclaw-vm = {
      enable = true;
      vms.agent1 = {
        cid = 4;
        identity = {
          inherit issuer;
          clientSecretFile = "/run/secrets/openclaw-agent1-client-secret";
        };
        allowedDomains = ["api.alpha.example"];
        credentials.alpha = credential "alpha" 1;
        gateway.hostPort = 18789;
        config = openclawPackage;
      };
    };
  };

  vmIdentity = name: {
    inherit issuer;
    clientSecretFile = "/run/secrets/openclaw-${name}-client-secret";
  };

  # services.openclaw-containers: OpenClaw is not in nixpkgs, a stand-in package.
  containerPackage = {pkgs, ...}: {
    services.openclaw-containers.openclawPackage = pkgs.standIn.package "openclaw" {};
  };
  instance = name: id: n: {
    identity = vmIdentity name;
    allowedDomains = ["api.${id}.example"];
    credentials."${id}-${name}" = containerCredential id n;
  };
  containerCredential = id: n: builtins.removeAttrs (credential id n) ["devDummyValue"];
  containersBase = {
    networking.hostName = "containers";
    system.stateVersion = "25.11";
    services.credproxy.settings = {
      identity.oidc.issuer = issuer;
      secrets.openbao = {
        address = "https://127.0.0.1:8200";
        auth.approle = {
          role_id_file = "/run/credentials/credproxy.service/role-id";
          secret_id_file = "/run/credentials/credproxy.service/secret-id";
        };
      };
    };
  };
in {
  inherit base credential openclawPackage issuer containerPackage instance containersBase;

  # Container mode, production: three instances with their own identities, credentials,
  # domains and host ports, and the hub.
  containers = [
    containersBase
    containerPackage
    {
      services.openclaw-containers = {
        enable = true;
        instances = {
          alice = instance "alice" "alpha" 11 // {ports.gateway = 18801;};
          bob =
            instance "bob" "beta" 12
            // {
              ports = {
                gateway = 18802;
                webchat = 18803;
              };
            };
          carol =
            instance "carol" "gamma" 13
            // {
              gateway.tokenFile = "/run/secrets/openclaw-carol-gateway-token";
              workspace.sharedContextPath = "/srv/openclaw/shared-context";
              resources = {
                memoryLimit = "8g";
                cpuLimit = "4";
              };
            };
        };
      };
    }
  ];

  # Containers next to a microVM: one proxy, the hub shared with the VM.
  containers-and-vms = [
    base
    containerPackage
    {
      services.openclaw-vm.vms.agent1.allowedDomains = ["hub.openclaw.internal"];
      services.openclaw-containers = {
        enable = true;
        hub.extraInstances = ["agent1"];
        instances.dora = instance "dora" "delta" 14 // {ports.gateway = 18804;};
      };
    }
  ];

  # Container mode in development: dev issuer identities, the CA certificate built in.
  containers-dev = [
    containerPackage
    ({pkgs, ...}: {
      networking.hostName = "containers-dev";
      system.stateVersion = "25.11";
      services.openclaw-containers = {
        enable = true;
        dangerousDevMode.enable = true;
        caCertificate = "${pkgs.writeText "credproxy-ca.crt" "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"}";
        instances.dev1 = {
          allowedDomains = ["api.alpha.example"];
          credentials.alpha = let
            c = containerCredential "alpha" 1;
          in
            c // {settings = c.settings // {source.env = "ALPHA";};};
        };
        instances.dev2.allowedDomains = ["api.beta.example"];
      };
    })
  ];

  # Three VMs: QEMU over AF_VSOCK, Cloud Hypervisor over its hybrid-vsock socket, and QEMU
  # with a TAP (DNS to the host, the tailnet through Tailscale).
  three-vms = [
    base
    {
      systemd.network.enable = true;
      services.openclaw-vm.vms = {
        agent2 = {
          cid = 5;
          hypervisor = "cloud-hypervisor";
          identity = vmIdentity "agent2";
          allowedDomains = ["api.beta.example" "*.beta-cdn.example"];
          credentials.beta = credential "beta" 2;
          gateway.hostPort = 18792;
          gateway.tokenFile = "/run/secrets/openclaw-agent2-gateway-token";
          config = openclawPackage;
        };
        agent3 = {
          cid = 6;
          identity = vmIdentity "agent3";
          allowedDomains = ["api.gamma.example"];
          credentials.gamma = credential "gamma" 3;
          network = {
            mac = "02:00:00:00:00:06";
            hostAddress = "10.88.6.1/24";
            guestAddress = "10.88.6.2/24";
            allowDns = true;
            tailscale.enable = true;
          };
          config = openclawPackage;
        };
      };
    }
  ];

  # Development mode with two QEMU VMs (dev issuer identities, dev OpenBao and Temporal).
  dev-two-vms = [
    {
      networking.hostName = "dev";
      system.stateVersion = "25.11";
      services.openclaw-vm = {
        enable = true;
        dangerousDevMode.enable = true;
        vms.dev1 = {
          cid = 7;
          allowedDomains = ["api.alpha.example"];
          credentials.alpha = credential "alpha" 1;
          gateway.hostPort = 18789;
          config = openclawPackage;
        };
        vms.dev2 = {
          cid = 8;
          allowedDomains = ["api.beta.example"];
          credentials.beta = credential "beta" 2;
          gateway.hostPort = 18790;
          config = openclawPackage;
        };
      };
    }
  ];

  # QEMU with a vhost-user-vsock device (vhost-device-vsock): the hybrid-vsock contract on a
  # host without /dev/vhost-vsock, as the microVM end-to-end test runs it.
  vhost-user = [
    base
    {
      services.openclaw-vm.vms.agent1 = {
        proxy.transport = "vsock_uds";
        config.microvm.qemu.machine = "q35";
      };
    }
  ];

  # Firecracker: no way to deliver files at boot, so the proxy only (CA at build time).
  firecracker = [
    base
    ({pkgs, ...}: {
      services.openclaw-vm.vms.agent1 = {
        hypervisor = "firecracker";
        gateway.hostPort = lib.mkForce null;
        caCertificate = "${pkgs.writeText "credproxy-ca.crt" "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"}";
        config.services.openclaw-guest.enable = false;
      };
    })
  ];
}
