# services.openclaw-vm: agent microVMs (microvm.nix) on this host, each reaching the outside
# world only through credproxy over VSOCK, with its own CID, identity, resources, optional TAP
# (locked down by nftables) and host-side gateway access.
#
# Needs microvm.nix's host module (`inputs.microvm.nixosModules.host`) and services.credproxy
# (the flake's `nixosModules.openclaw-vm` imports both modules of this repo).
{
  config,
  options,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.openclaw-vm;
  cp = config.services.credproxy;
  cplib = import ../nix/lib.nix {inherit lib;};
  inherit (lib) mkOption types literalExpression;

  microvmStateDir = config.microvm.stateDir or "/var/lib/microvms";
  hostStateDir = "/var/lib/openclaw-vm";
  devTokenPort = 18200;
  openbaoDevPort = cp.openbao.dev.port;

  # `config` here is the VM's own submodule configuration.
  vmOptions = {
    name,
    config,
    ...
  }: {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Whether to declare this VM.";
        example = false;
      };
      autostart = mkOption {
        type = types.bool;
        default = true;
        description = "Start the VM at boot (microvm.nix `microvm.autostart`).";
        example = false;
      };
      hypervisor = mkOption {
        type = types.enum ["qemu" "cloud-hypervisor" "firecracker"];
        default = cfg.hypervisor;
        defaultText = literalExpression "config.services.openclaw-vm.hypervisor";
        description = "Hypervisor of this VM.";
        example = "cloud-hypervisor";
      };
      cid = mkOption {
        type = types.ints.between 3 4294967294;
        description = "Guest VSOCK CID (unique on the host; 0-2 are reserved).";
        example = 4;
      };
      memory = mkOption {
        type = types.ints.positive;
        default = 4096;
        description = "Guest memory in MiB.";
        example = 8192;
      };
      vcpus = mkOption {
        type = types.ints.positive;
        default = 2;
        description = "Guest vCPUs.";
        example = 4;
      };
      agentId = mkOption {
        type = types.str;
        default = name;
        defaultText = literalExpression "<name>";
        description = "Agent identity (the token's agent claim) bound to this VM's proxy listener.";
        example = "agent1";
      };
      proxy = {
        transport = mkOption {
          type = types.enum ["vsock" "vsock_uds"];
          default =
            if config.hypervisor == "qemu"
            then "vsock"
            else "vsock_uds";
          defaultText = literalExpression ''if hypervisor == "qemu" then "vsock" else "vsock_uds"'';
          description = ''
            How credproxy listens for this VM: `vsock` (AF_VSOCK through the vhost-vsock kernel
            device; QEMU) or `vsock_uds` (the hypervisor's hybrid-vsock Unix socket; Cloud
            Hypervisor, Firecracker).
          '';
          example = "vsock_uds";
        };
        port = mkOption {
          type = types.port;
          default = 18790;
          description = "VSOCK port the guest connects to on CID 2. AF_VSOCK listeners share the host's port space: give each QEMU VM its own.";
          example = 18791;
        };
      };
      allowedDomains = mkOption {
        type = types.listOf types.str;
        default = [];
        description = "Hosts added to credproxy's allowlist for this VM (the allowlist is global; restrict per agent in policy).";
        example = ["api.anthropic.com"];
      };
      credentials = mkOption {
        default = {};
        description = "Credentials this VM's agent may use: placeholder, where it is injected, and where the secret lives.";
        example = literalExpression ''
          {
            anthropic = {
              placeholder = "agent-vault-00000000-0000-0000-0000-000000000001";
              envVar = "ANTHROPIC_API_KEY";
              settings = {
                header_name = "x-api-key";
                bound_domains = [ "api.anthropic.com" ];
                source.openbao.path = "openclaw/credentials/anthropic";
              };
            };
          }
        '';
        type = types.attrsOf (types.submodule {
          options = {
            placeholder = mkOption {
              type = types.str;
              description = "Placeholder handed to the agent.";
              example = "agent-vault-00000000-0000-0000-0000-000000000001";
            };
            envVar = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Environment variable that carries the placeholder in the guest.";
              example = "ANTHROPIC_API_KEY";
            };
            settings = mkOption {
              type = (pkgs.formats.yaml {}).type;
              default = {};
              description = "The rest of the credential's entry in `services.credproxy.settings.credentials` (id and placeholder are added).";
              example = {
                header_name = "x-api-key";
                bound_domains = ["api.anthropic.com"];
                source.openbao.path = "openclaw/credentials/anthropic";
              };
            };
            devDummyValue = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "With dangerousDevMode, the dummy value seeded into the dev OpenBao at this credential's path.";
              example = "dummy-key-for-httpbin";
            };
          };
        });
      };
      network = mkOption {
        default = null;
        description = "A TAP device for this VM (none: VSOCK only). Locked down by nftables: default drop.";
        example = {
          hostAddress = "10.88.1.1/24";
          guestAddress = "10.88.1.2/24";
        };
        type = types.nullOr (types.submodule {
          options = {
            tap = mkOption {
              type = types.strMatching "[A-Za-z0-9_.-]{1,15}";
              default = "vm-${name}";
              defaultText = literalExpression ''"vm-<name>"'';
              description = "Host TAP interface name (at most 15 characters).";
              example = "vm-agent1";
            };
            mac = mkOption {
              type = types.strMatching "([0-9a-f]{2}:){5}[0-9a-f]{2}";
              description = "Guest MAC address (locally administered: first octet 02).";
              example = "02:00:00:00:00:01";
            };
            hostAddress = mkOption {
              type = types.str;
              description = "Host address on the TAP, with prefix length.";
              example = "10.88.1.1/24";
            };
            guestAddress = mkOption {
              type = types.str;
              description = "Guest address, with prefix length.";
              example = "10.88.1.2/24";
            };
            allowDns = mkOption {
              type = types.bool;
              default = false;
              description = "Allow DNS (53/udp, 53/tcp) from the VM to the host's TAP address (run a resolver there).";
              example = true;
            };
            tailscale = {
              enable = mkOption {
                type = types.bool;
                default = false;
                description = "Forward (and masquerade) the VM's traffic to the host's Tailscale interface, and nothing else.";
                example = true;
              };
              interface = mkOption {
                type = types.str;
                default = "tailscale0";
                description = "The host's Tailscale interface.";
                example = "tailscale0";
              };
            };
          };
        });
      };
      gateway = {
        hostPort = mkOption {
          type = types.nullOr types.port;
          default = null;
          description = "Host loopback port bridged to the guest's gateway over VSOCK (`credproxy bridge`); null: none.";
          example = 18789;
        };
        guestVsockPort = mkOption {
          type = types.port;
          default = 18789;
          description = "The guest's gateway VSOCK port.";
          example = 18789;
        };
        configFile = mkOption {
          type = types.nullOr types.path;
          default = null;
          description = "Host file with the guest's `openclaw.json` (may hold the gateway token), delivered as a credential.";
          example = "/run/secrets/openclaw-agent1.json";
        };
      };
      oidc = {
        tokenUrl = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "Token endpoint the guest's bridge uses (client credentials); dangerousDevMode sets the dev one.";
          example = "https://id.example/realms/openclaw/protocol/openid-connect/token";
        };
        clientId = mkOption {
          type = types.str;
          default = name;
          defaultText = literalExpression "<name>";
          description = "This VM's OIDC client id.";
          example = "agent1";
        };
        clientSecretFile = mkOption {
          type = types.nullOr types.path;
          default = null;
          description = "Host file with this VM's OIDC client secret (a string path; never the store). Delivered to this guest's bridge only.";
          example = "/run/secrets/openclaw-agent1-client-secret";
        };
      };
      caCertificate = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = ''
          The proxy CA certificate at build time (public). When null the guest receives
          {option}`services.credproxy.ca.publicCertificate` at boot.
        '';
        example = literalExpression "./credproxy-ca.crt";
      };
      config = mkOption {
        type = types.deferredModule;
        default = {};
        description = "Extra NixOS configuration of the guest.";
        example = literalExpression "{ services.openclaw-guest.package = inputs.nix-openclaw.packages.x86_64-linux.openclaw; }";
      };
    };
  };

  vms = lib.filterAttrs (_: v: v.enable) cfg.vms;
  vmList = lib.mapAttrsToList (name: vm: vm // {inherit name;}) vms;
  netVms = lib.filter (vm: vm.network != null) vmList;

  udsPath = name: "${microvmStateDir}/${name}/notify.vsock";
  # The host's way to the guest, by transport.
  guestEndpoint = vm: port:
    if vm.proxy.transport == "vsock"
    then cplib.endpoint.vsock vm.cid port
    else cplib.endpoint.vsockUds (udsPath vm.name) port;
  hostListenEndpoint = vm: port:
    if vm.proxy.transport == "vsock"
    then cplib.endpoint.vsock "any" port
    else cplib.endpoint.vsockUds (udsPath vm.name) port;

  # The guest's client secret is written by provisioning: start the VM after it.
  devUnits = lib.optional cfg.dangerousDevMode.enable "credproxy-openbao-provision.service";

  vmDir = name: "${hostStateDir}/${name}";
  devClientSecret = name: "${vmDir name}/oidc-client-secret";
  clientSecretFile = vm:
    if vm.oidc.clientSecretFile != null
    then vm.oidc.clientSecretFile
    else if cfg.dangerousDevMode.enable
    then devClientSecret vm.name
    else null;
  tokenUrl = vm:
    if vm.oidc.tokenUrl != null
    then vm.oidc.tokenUrl
    else if cfg.dangerousDevMode.enable
    then "http://127.0.0.1:8200/v1/identity/oidc/provider/credproxy/token"
    else null;

  placeholderEnv = vm:
    pkgs.writeText "credproxy-placeholder-env-${vm.name}" (lib.concatStrings (lib.mapAttrsToList (
        _: c: lib.optionalString (c.envVar != null) "${c.envVar}=${c.placeholder}\n"
      )
      vm.credentials));

  # Files the guest receives, by credential name (host paths, read when the VM starts).
  guestFiles = vm:
    {
      credproxy-placeholder-env = "${placeholderEnv vm}";
    }
    // lib.optionalAttrs (vm.caCertificate == null) {credproxy-ca = cp.ca.publicCertificate;}
    // lib.optionalAttrs (clientSecretFile vm != null) {credproxy-oidc-client-secret = toString (clientSecretFile vm);}
    // lib.optionalAttrs (vm.gateway.configFile != null) {openclaw-config = toString vm.gateway.configFile;};

  exportDir = name: "${vmDir name}/export";

  guestModule = vm: {lib, ...}: {
    imports = [./credproxy-guest.nix ./openclaw-vm-guest.nix vm.config];

    networking.hostName = lib.mkDefault vm.name;
    system.stateVersion = lib.mkDefault "25.11";

    microvm =
      {
        inherit (vm) hypervisor;
        vcpu = vm.vcpus;
        mem = vm.memory;
        vsock.cid = vm.cid;
        interfaces = lib.optional (vm.network != null) {
          type = "tap";
          id = vm.network.tap;
          inherit (vm.network) mac;
        };
      }
      // lib.optionalAttrs (vm.hypervisor == "qemu") {
        credentialFiles = guestFiles vm;
      }
      // lib.optionalAttrs (vm.hypervisor == "cloud-hypervisor") {
        shares = [
          {
            proto = "virtiofs";
            tag = "credproxy-host";
            source = exportDir vm.name;
            mountPoint = "/mnt/credproxy-host";
            readOnly = true;
          }
        ];
      };

    services.credproxy-guest = {
      enable = true;
      package = lib.mkDefault cp.package;
      hostVsockPort = vm.proxy.port;
      caCertificate = vm.caCertificate;
      delivery =
        if vm.hypervisor == "cloud-hypervisor"
        then {
          method = "directory";
          directory = "/mnt/credproxy-host";
        }
        else {method = "systemd-credentials";};
      oidc =
        {
          tokenUrl = tokenUrl vm;
          inherit (vm.oidc) clientId;
        }
        // lib.optionalAttrs (cfg.dangerousDevMode.enable && vm.oidc.tokenUrl == null) {
          tokenEndpointBridge = {
            localPort = 8200;
            hostVsockPort = devTokenPort;
          };
        };
    };

    services.openclaw-guest = {
      enable = true;
      gatewayVsockPort = vm.gateway.guestVsockPort;
      configCredential = lib.mkIf (vm.gateway.configFile != null) "openclaw-config";
    };

    networking.useDHCP = false;
    networking.firewall.enable = true;
    systemd.network = lib.mkIf (vm.network != null) {
      enable = true;
      networks."10-host" = {
        matchConfig.MACAddress = vm.network.mac;
        address = [vm.network.guestAddress];
        routes = [{Gateway = cplib.addressOf vm.network.hostAddress;}];
        dns = lib.optional vm.network.allowDns (cplib.addressOf vm.network.hostAddress);
      };
    };

    # dangerousDevMode: console autologin for the agent user; nothing else is opened.
    services.getty.autologinUser = lib.mkIf cfg.dangerousDevMode.enable (lib.mkDefault "openclaw");
  };
in {
  options.services.openclaw-vm = {
    enable = lib.mkEnableOption "OpenClaw agent microVMs whose only egress is credproxy";

    hypervisor = mkOption {
      type = types.enum ["qemu" "cloud-hypervisor" "firecracker"];
      default = "qemu";
      description = "Default hypervisor of the VMs.";
      example = "cloud-hypervisor";
    };

    vms = mkOption {
      type = types.attrsOf (types.submodule vmOptions);
      default = {};
      description = "Agent VMs, by name.";
      example = literalExpression ''
        {
          agent1 = {
            cid = 4;
            credentials.anthropic = {
              placeholder = "agent-vault-00000000-0000-0000-0000-000000000001";
              envVar = "ANTHROPIC_API_KEY";
              settings = {
                header_name = "x-api-key";
                bound_domains = [ "api.anthropic.com" ];
                source.openbao.path = "openclaw/credentials/anthropic";
              };
            };
            allowedDomains = [ "api.anthropic.com" ];
          };
        }
      '';
    };

    dangerousDevMode = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Development only. Turns on the OpenBao and Temporal dev servers, a generated CA,
          provisioning (AppRole, a dev OIDC client per VM, the credentials' `devDummyValue`s),
          a dev identity issued by the dev OpenBao (reachable from each guest over VSOCK), and
          console autologin in the guests.
        '';
        example = true;
      };
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions =
        [
          {
            assertion = options ? microvm.vms;
            message = "services.openclaw-vm needs microvm.nix's host module (inputs.microvm.nixosModules.host).";
          }
          {
            assertion = let cids = map (vm: vm.cid) vmList; in lib.length cids == lib.length (lib.unique cids);
            message = "services.openclaw-vm.vms: every VM needs its own cid.";
          }
          {
            assertion = let taps = map (vm: vm.network.tap) netVms; in lib.length taps == lib.length (lib.unique taps);
            message = "services.openclaw-vm.vms: every VM needs its own network.tap.";
          }
          {
            assertion = let
              ports = map (vm: vm.proxy.port) (lib.filter (vm: vm.proxy.transport == "vsock") vmList);
            in
              lib.length ports == lib.length (lib.unique ports);
            message = "services.openclaw-vm.vms: VMs with proxy.transport = \"vsock\" share the host's AF_VSOCK port space; give each its own proxy.port.";
          }
          {
            assertion = !cfg.dangerousDevMode.enable || lib.all (vm: vm.proxy.transport != "vsock" || vm.proxy.port != devTokenPort) vmList;
            message = "services.openclaw-vm: VSOCK port ${toString devTokenPort} is taken by the dev token endpoint bridge.";
          }
        ]
        ++ lib.concatMap (vm: [
          {
            assertion =
              if vm.proxy.transport == "vsock"
              then vm.hypervisor == "qemu"
              else lib.elem vm.hypervisor ["cloud-hypervisor" "firecracker"];
            message = ''
              services.openclaw-vm.vms.${vm.name}: hypervisor "${vm.hypervisor}" does not support proxy.transport = "${vm.proxy.transport}".
              QEMU uses the vhost-vsock kernel device (AF_VSOCK on the host: transport "vsock");
              Cloud Hypervisor and Firecracker expose a hybrid-vsock Unix socket (transport "vsock_uds").
            '';
          }
          {
            assertion = vm.hypervisor != "firecracker" || (vm.caCertificate != null && clientSecretFile vm == null && vm.gateway.configFile == null);
            message = ''
              services.openclaw-vm.vms.${vm.name}: microvm.nix gives Firecracker neither credentialFiles nor shares,
              so the guest cannot receive the CA certificate, its OIDC client secret or the gateway config at boot.
              Set caCertificate (build time) and no client secret/config file, or use qemu or cloud-hypervisor.
            '';
          }
          {
            assertion = tokenUrl vm == null || clientSecretFile vm != null;
            message = "services.openclaw-vm.vms.${vm.name}: oidc.tokenUrl is set but oidc.clientSecretFile is not.";
          }
          {
            assertion = vm.network == null || config.systemd.network.enable;
            message = "services.openclaw-vm.vms.${vm.name}.network: the host TAP is configured with systemd-networkd; set systemd.network.enable = true.";
          }
        ])
        vmList
        ++ cplib.secretPathAssertions (lib.concatMap (vm: [
            {
              what = "services.openclaw-vm.vms.${vm.name}.oidc.clientSecretFile";
              value = vm.oidc.clientSecretFile;
            }
            {
              what = "services.openclaw-vm.vms.${vm.name}.gateway.configFile";
              value = vm.gateway.configFile;
            }
          ])
          vmList);

      services.credproxy = {
        enable = true;
        settings = {
          listeners = map (vm:
            {
              name = "vm-${vm.name}";
              agent = vm.agentId;
            }
            // (
              if vm.proxy.transport == "vsock"
              then {
                vsock = {
                  cid = "any";
                  inherit (vm.proxy) port;
                };
              }
              else {
                vsock_uds = {
                  path = udsPath vm.name;
                  inherit (vm.proxy) port;
                };
              }
            ))
          vmList;
          allowed_domains = lib.unique (lib.concatMap (vm: vm.allowedDomains) vmList);
          credentials = lib.concatMap (vm:
            lib.mapAttrsToList (id: c:
              {
                inherit id;
                inherit (c) placeholder;
              }
              // c.settings)
            vm.credentials)
          vmList;
        };
      };

      # Declared only when microvm.nix's host module is imported (asserted above), so a missing
      # module gives the assertion's message rather than "option does not exist".
      microvm = lib.optionalAttrs (options ? microvm.vms) {
        vms =
          lib.mapAttrs (name: vm: {
            inherit (vm) autostart;
            config = guestModule (vm // {inherit name;});
          })
          vms;
      };

      # Per-VM host directory: development client secrets, and the export for Cloud Hypervisor.
      systemd.tmpfiles.rules =
        ["d ${hostStateDir} 0755 root root - -"]
        ++ lib.concatMap (vm:
          ["d ${vmDir vm.name} 0750 root kvm - -"]
          # credproxy creates <notify.vsock>_<port> next to the hypervisor's socket.
          ++ lib.optional (vm.proxy.transport == "vsock_uds") "a+ ${microvmStateDir}/${vm.name} - - - - u:credproxy:rwx")
        vmList;

      # The hypervisor (user microvm) connects to credproxy's hybrid-vsock sockets.
      users.users = lib.optionalAttrs (options ? microvm.vms) {
        microvm.extraGroups = lib.mkIf (lib.any (vm: vm.proxy.transport == "vsock_uds") vmList) ["credproxy"];
      };

      systemd.services = lib.mkMerge (map (vm:
        lib.mkMerge [
          {
            "microvm@${vm.name}" = {
              after = ["credproxy.service"] ++ devUnits ++ lib.optional (vm.hypervisor == "cloud-hypervisor") "openclaw-vm-${vm.name}-export.service";
              wants = ["credproxy.service"] ++ devUnits ++ lib.optional (vm.hypervisor == "cloud-hypervisor") "openclaw-vm-${vm.name}-export.service";
            };
          }
          (lib.mkIf (vm.hypervisor == "cloud-hypervisor") {
            "openclaw-vm-${vm.name}-export" = {
              description = "Files for the ${vm.name} guest's read-only share (Cloud Hypervisor has no credentialFiles)";
              after = ["credproxy-ca-init.service"] ++ lib.optional cfg.dangerousDevMode.enable "credproxy-openbao-provision.service";
              path = [pkgs.coreutils];
              script = ''
                set -euo pipefail
                d=${exportDir vm.name}
                rm -rf "$d.new"; install -d -m 0750 -g kvm "$d.new"
                ${lib.concatStrings (lib.mapAttrsToList (n: src: ''
                    install -m 0440 -g kvm ${lib.escapeShellArg src} "$d.new/${n}"
                  '')
                  (guestFiles vm))}
                rm -rf "$d"; mv "$d.new" "$d"
              '';
              serviceConfig = {
                Type = "oneshot";
                RemainAfterExit = true;
                ProtectSystem = "strict";
                ReadWritePaths = [(vmDir vm.name)];
                ProtectHome = true;
                PrivateTmp = true;
                PrivateNetwork = true;
                NoNewPrivileges = true;
                UMask = "0077";
              };
            };
          })
          (lib.mkIf (vm.gateway.hostPort != null) {
            "openclaw-vm-${vm.name}-gateway" = {
              description = "Host access to the ${vm.name} gateway (loopback TCP to guest VSOCK)";
              wantedBy = ["multi-user.target"];
              after = ["microvm@${vm.name}.service"];
              partOf = ["microvm@${vm.name}.service"];
              serviceConfig =
                cplib.hardening.bridge
                // {
                  ExecStart = lib.escapeShellArgs [
                    (lib.getExe' cp.package "credproxy")
                    "bridge"
                    (cplib.endpoint.tcp "127.0.0.1" vm.gateway.hostPort)
                    (guestEndpoint vm vm.gateway.guestVsockPort)
                  ];
                  DynamicUser = true;
                  SupplementaryGroups = lib.optional (vm.proxy.transport == "vsock_uds") "kvm";
                  Restart = "always";
                  RestartSec = 2;
                  RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"] ++ lib.optional (vm.proxy.transport == "vsock") "AF_VSOCK";
                };
            };
          })
        ])
      vmList);

      # TAP devices: host address via networkd, and the lockdown table.
      systemd.network.networks = lib.listToAttrs (map (vm:
        lib.nameValuePair "40-openclaw-${vm.name}" {
          matchConfig.Name = vm.network.tap;
          address = [vm.network.hostAddress];
          networkConfig.ConfigureWithoutCarrier = true;
          linkConfig.RequiredForOnline = "no";
        })
      netVms);

      networking.nftables = lib.mkIf (netVms != []) {
        enable = true;
        tables.openclaw-vm = {
          family = "inet";
          content = cplib.nftRuleset (map (vm: {
              inherit (vm.network) tap allowDns;
              hostAddress = cplib.addressOf vm.network.hostAddress;
              tailscaleInterface =
                if vm.network.tailscale.enable
                then vm.network.tailscale.interface
                else null;
            })
            netVms);
        };
      };

      networking.firewall.interfaces = lib.listToAttrs (map (vm:
        lib.nameValuePair vm.network.tap {
          allowedUDPPorts = lib.optional vm.network.allowDns 53;
          allowedTCPPorts = lib.optional vm.network.allowDns 53;
        })
      netVms);

      networking.nat = let
        ts = lib.filter (vm: vm.network.tailscale.enable) netVms;
      in
        lib.mkIf (ts != []) {
          enable = true;
          internalInterfaces = map (vm: vm.network.tap) ts;
          externalInterface = (builtins.head ts).network.tailscale.interface;
        };
    }

    (lib.mkIf cfg.dangerousDevMode.enable {
      warnings = [
        ''
          ############################################################################
          services.openclaw-vm.dangerousDevMode is ON. This host runs an in-memory OpenBao
          with a root token, a Temporal dev server, dummy credentials, and exposes the dev
          OpenBao to every agent VM over VSOCK port ${toString devTokenPort} (for the dev
          identity). Guests autologin on the console. NEVER use this with real credentials.
          ############################################################################
        ''
      ];

      services.credproxy = {
        ca.generate = true;
        temporal.dev.enable = true;
        openbao.dev = {
          enable = true;
          oidcClients =
            lib.listToAttrs (map (vm: lib.nameValuePair vm.oidc.clientId (devClientSecret vm.name))
              (lib.filter (vm: vm.oidc.clientSecretFile == null) vmList));
          seed = lib.listToAttrs (lib.concatMap (vm:
            lib.mapAttrsToList (_: c: lib.nameValuePair c.settings.source.openbao.path {key = c.devDummyValue;})
            (lib.filterAttrs (_: c: c.devDummyValue != null && (c.settings.source or {}) ? openbao) vm.credentials))
          vmList);
        };
        settings.identity.oidc = lib.mkDefault {
          issuer = "http://127.0.0.1:${toString openbaoDevPort}/v1/identity/oidc/provider/credproxy";
          audiences = ["credproxy"];
          agent_claim = "client_id";
        };
      };

      # Dev identity: each guest reaches the dev OpenBao's token endpoint through this bridge.
      systemd.services = lib.listToAttrs (map (vm:
        lib.nameValuePair "openclaw-vm-${vm.name}-dev-token-endpoint" {
          description = "DEV: ${vm.name} guest -> OpenBao dev token endpoint";
          wantedBy = ["multi-user.target"];
          after = ["credproxy-openbao-dev.service"] ++ lib.optional (vm.proxy.transport == "vsock_uds") "microvm@${vm.name}.service";
          serviceConfig = {
            ExecStart = lib.escapeShellArgs [
              (lib.getExe' cp.package "credproxy")
              "bridge"
              (hostListenEndpoint vm devTokenPort)
              (cplib.endpoint.tcp "127.0.0.1" openbaoDevPort)
            ];
            User = "credproxy";
            Group = "credproxy";
            Restart = "always";
            RestartSec = 2;
            ReadWritePaths = lib.optional (vm.proxy.transport == "vsock_uds") "${microvmStateDir}/${vm.name}";
            CapabilityBoundingSet = "";
            NoNewPrivileges = true;
            ProtectSystem = "strict";
            ProtectHome = true;
            PrivateTmp = true;
            PrivateDevices = true;
            MemoryDenyWriteExecute = true;
            RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"] ++ lib.optional (vm.proxy.transport == "vsock") "AF_VSOCK";
            SystemCallArchitectures = "native";
            SystemCallFilter = ["@system-service" "~@privileged" "~@resources"];
            LimitCORE = 0;
            MemorySwapMax = 0;
            UMask = "0077";
          };
        })
      (lib.filter (vm: vm.oidc.tokenUrl == null) vmList));
    })
  ]);
}
