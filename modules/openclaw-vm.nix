# services.openclaw-vm: agent microVMs (microvm.nix) on this host, each reaching the outside
# world only through credproxy over VSOCK, with its own CID, listener, identity, credentials,
# allowed domains, resources, optional TAP (locked down by nftables) and host-side gateway
# access.
#
# Per VM (D1/D2 in the project's decisions):
#   - its own credproxy listener: AF_VSOCK on a port of its own, accepting its CID only
#     (`peer_cid`), or a hybrid-vsock Unix socket of its own (Cloud Hypervisor, Firecracker,
#     QEMU with vhost-user-vsock);
#   - that listener carries the VM's agent identity: the proxy obtains the agent's token
#     (client credentials, client secret on the host; or the dev issuer in dangerousDevMode),
#     so nothing in the guest holds a token or a secret;
#   - its credentials and allowed domains are usable from its listener by its agent only
#     (generated policy rules), another VM's placeholder is refused (403);
#   - the files it receives at boot sit in a directory only its hypervisor can read.
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

  hostStateDir = "/var/lib/openclaw-vm";
  devIssuerDir = "/var/lib/credproxy/dev-issuer";
  devIssuerKey = "${devIssuerDir}/dev-issuer-key.pem";

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
        description = "Guest memory in MiB (QEMU hangs with exactly 2048; microvm.nix issue 171).";
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
        description = ''
          This VM's agent identity: the value of the token's agent claim
          (`identity.oidc.agent_claim`, `azp` by default) that its listener is bound to.
        '';
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
            How the guest reaches credproxy. `vsock`: AF_VSOCK through the host kernel's
            vhost-vsock device (QEMU); the listener accepts this VM's CID only. `vsock_uds`:
            the hypervisor's hybrid-vsock Unix socket (Cloud Hypervisor, Firecracker; for
            QEMU, a `vhost-user-vsock` device served by `vhost-device-vsock`, for hosts without
            /dev/vhost-vsock), one socket per VM.
          '';
          example = "vsock_uds";
        };
        port = mkOption {
          type = types.ints.u32;
          default = 18790 + config.cid;
          defaultText = literalExpression "18790 + cid";
          description = ''
            VSOCK port of this VM's listener (the guest connects to CID 2 on it). AF_VSOCK
            listeners share the host's port space: the default, derived from the unique CID,
            keeps them apart; clashes are refused at evaluation.
          '';
          example = 18794;
        };
      };
      identity = cplib.identityOptions {
        inherit (config) agentId;
        unit = "VM";
        place = "guest";
        exampleId = "agent1";
      };
      allowedDomains = mkOption {
        type = types.listOf types.str;
        default = [];
        description = ''
          Hosts this VM may reach ("*.example.com" matches exactly one extra label). Added to
          credproxy's allowlist, and enforced per VM by the generated policy rules: another
          VM's domains are refused on this VM's listener.
        '';
        example = ["api.anthropic.com"];
      };
      credentials = cplib.credentialsOption {
        inherit pkgs;
        unit = "VM";
        place = "guest";
        extraOptions = {
          devDummyValue = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "With dangerousDevMode, the dummy value seeded into the dev OpenBao at this credential's path.";
            example = "dummy-key-for-httpbin";
          };
        };
      };
      placeholderEnvironment = mkOption {
        type = types.attrsOf types.str;
        readOnly = true;
        default = lib.mapAttrs' (_: c: lib.nameValuePair c.envVar c.placeholder) (lib.filterAttrs (_: c: c.envVar != null) config.credentials);
        defaultText = literalExpression "{ <envVar> = <placeholder>; } of the credentials";
        description = "The variables the guest's services and login shells get (placeholders, not secrets).";
        example = {ANTHROPIC_API_KEY = "agent-vault-00000000-0000-0000-0000-000000000001";};
      };
      network = mkOption {
        default = null;
        description = "A TAP device for this VM (none: VSOCK only). Locked down by nftables: default drop.";
        example = {
          mac = "02:00:00:00:00:01";
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
                description = ''
                  Forward (and masquerade) the VM's traffic to the tailnet through the host's
                  Tailscale interface, to `destinations` only: with an exit node on the host,
                  any other destination would leave through it, past the proxy.
                '';
                example = true;
              };
              interface = mkOption {
                type = types.str;
                default = "tailscale0";
                description = "The host's Tailscale interface.";
                example = "tailscale0";
              };
              destinations = mkOption {
                type = types.listOf types.str;
                default = ["100.64.0.0/10" "fd7a:115c:a1e0::/48"];
                description = "CIDRs the VM may reach through Tailscale (default: the tailnet's own address ranges).";
                example = ["100.101.102.103/32"];
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
          type = types.ints.u32;
          default = 18789;
          description = "The guest's gateway VSOCK port.";
          example = 18789;
        };
        tokenFile = mkOption {
          type = types.nullOr types.path;
          default = null;
          description = ''
            Host file with the gateway's auth token (a string path, never the store). It reaches
            the guest as the credential `openclaw-gateway-token`, readable by this VM's
            hypervisor only, and is put into the generated openclaw.json at service start.
            Null: a random token is generated once into /var/lib/openclaw-vm/<name>/gateway-token.
          '';
          example = "/run/secrets/openclaw-agent1-gateway-token";
        };
      };
      stateVolumeSize = mkOption {
        type = types.nullOr types.ints.positive;
        default = 16384;
        description = ''
          Size in MiB of the guest's persistent volume for /var/lib/openclaw (the agent's
          state and workspace), `openclaw-state.img` in microvm.nix's state directory of the
          VM; null: no volume (state is lost when the VM stops).
        '';
        example = 32768;
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
  tsVms = lib.filter (vm: vm.network.tailscale.enable) netVms;

  # Per-VM names and paths.
  group = name: "openclaw-vm-${name}";
  listenerName = name: "vm-${name}";
  vmRunDir = name: "${cfg.runtimeDir}/${name}";
  # Files the guest receives: root:<vm group> 0750/0440; only this VM's hypervisor (and
  # virtiofsd, as root) can read them.
  guestDir = name: "${vmRunDir name}/guest";
  # Sockets shared by this VM's hypervisor, vhost-device-vsock, credproxy and the gateway
  # bridge: 2770 root:<vm group>.
  socketDir = name: "${vmRunDir name}/sockets";
  # The hybrid-vsock socket: the hypervisor (or vhost-device-vsock) listens on it for host
  # connections; a guest connection to port P arrives as a connection to `<path>_P`.
  hybridPath = name: "${socketDir name}/hybrid.vsock";
  vhostUserSocket = name: "${socketDir name}/vhost-user-vsock.sock";
  consoleSocket = name: "${socketDir name}/console.sock";
  vmStateDir = name: "${hostStateDir}/${name}";
  generatedTokenFile = name: "${vmStateDir name}/gateway-token";

  isVhostUser = vm: vm.hypervisor == "qemu" && vm.proxy.transport == "vsock_uds";
  # dangerousDevMode: every VM's agent gets its tokens from credproxy's dev issuer.
  devIdentity = _vm: cfg.dangerousDevMode.enable;
  clientSecretCredential = name: "vm-${name}-client-secret";

  # The host's way to a guest port.
  guestEndpoint = vm: port:
    if vm.proxy.transport == "vsock"
    then cplib.endpoint.vsock vm.cid port
    else cplib.endpoint.vsockUds (hybridPath vm.name) port;

  agentToken = vm:
    cplib.agentToken {
      dev = devIdentity vm;
      inherit devIssuerKey;
      clientSecretFile = "${cp.credentialsDirectory}/${clientSecretCredential vm.name}";
    }
    vm.identity;

  listener = vm:
    {
      name = listenerName vm.name;
      agent = vm.agentId;
      agent_token = agentToken vm;
    }
    // (
      if vm.proxy.transport == "vsock"
      then {
        vsock = {
          cid = "any";
          inherit (vm.proxy) port;
          peer_cid = vm.cid;
        };
      }
      else {
        vsock_uds = {
          path = hybridPath vm.name;
          inherit (vm.proxy) port;
        };
        unix_mode = "0660";
      }
    );

  placeholderEnv = vm:
    pkgs.writeText "credproxy-placeholder-env-${vm.name}" (lib.concatStrings (lib.mapAttrsToList (n: v: "${n}=${v}\n") vm.placeholderEnvironment));

  # What the guest receives at boot, by credential name -> host source file.
  guestFileSources = vm:
    {
      credproxy-placeholder-env = "${placeholderEnv vm}";
      openclaw-gateway-token =
        if vm.gateway.tokenFile != null
        then "$CREDENTIALS_DIRECTORY/gateway-token"
        else generatedTokenFile vm.name;
    }
    // lib.optionalAttrs (vm.caCertificate == null) {credproxy-ca = cp.ca.publicCertificate;};
  guestFiles = vm: lib.mapAttrs (n: _: "${guestDir vm.name}/${n}") (guestFileSources vm);

  # The generated policy rules: each VM's credentials and domains are its own.
  lower = lib.toLower;
  policyUnits =
    map (vm: {
      inherit (vm) name;
      listener = listenerName vm.name;
      agent = vm.agentId;
      credentials = lib.attrNames vm.credentials;
      domains = map lower vm.allowedDomains;
      kind = "vsock";
      peer = "vsock:${toString vm.cid}:1024";
    })
    vmList;
  credentialOwner = lib.listToAttrs (lib.concatMap (vm: map (id: lib.nameValuePair id (listenerName vm.name)) (lib.attrNames vm.credentials)) vmList);
  policyRules = cplib.ownershipPolicy {
    module = "services.openclaw-vm (modules/openclaw-vm.nix)";
    prefix = "openclaw_vm";
    what = "VM";
    units = policyUnits;
  };
  policyTests = cplib.ownershipPolicyTests {
    prefix = "openclaw_vm";
    what = "VM";
    units = policyUnits;
  };

  adminPort = let
    a = cp.settings.admin.tcp or null;
  in
    if a == null
    then null
    else lib.toInt (lib.last (lib.splitString ":" a));
  tcpListenerPorts = map (l: lib.toInt (lib.last (lib.splitString ":" l.tcp))) (lib.filter (l: l.tcp != null) cp.settings.listeners);
  gatewayPorts = lib.filter (p: p != null) (map (vm: vm.gateway.hostPort) vmList);
  unique = xs: lib.length xs == lib.length (lib.unique xs);

  guestModule = vm: {
    lib,
    config,
    ...
  }: let
    m = config.microvm;
    pci = !(lib.hasPrefix "microvm" m.qemu.machine) || m.shares != [];
  in {
    imports = [./credproxy-guest.nix ./openclaw-vm-guest.nix vm.config];

    networking.hostName = lib.mkDefault vm.name;
    system.stateVersion = lib.mkDefault "25.11";

    microvm = lib.mkMerge [
      {
        inherit (vm) hypervisor;
        vcpu = vm.vcpus;
        mem = vm.memory;
        # QEMU with vhost-user-vsock: the device comes from the extra arguments below; a CID
        # here would add the kernel vhost-vsock device as well.
        vsock.cid =
          if isVhostUser vm
          then null
          else vm.cid;
        interfaces = lib.optional (vm.network != null) {
          type = "tap";
          id = vm.network.tap;
          inherit (vm.network) mac;
        };
        volumes = lib.optional (vm.stateVolumeSize != null) {
          image = "openclaw-state.img";
          mountPoint = "/var/lib/openclaw";
          size = vm.stateVolumeSize;
          label = "openclaw-state";
        };
      }
      (lib.mkIf (vm.hypervisor == "qemu") {
        credentialFiles = guestFiles vm;
      })
      (lib.mkIf (isVhostUser vm) {
        qemu.extraArgs =
          # vhost-user devices need guest memory the backend can map.
          lib.optionals (m.shares == []) [
            "-object"
            "memory-backend-memfd,id=mem,size=${toString vm.memory}M,share=on"
            "-numa"
            "node,memdev=mem"
          ]
          ++ [
            "-chardev"
            "socket,id=openclaw-vsock,path=${vhostUserSocket vm.name}"
            "-device"
            "vhost-user-vsock-${
              if pci
              then "pci"
              else "device"
            },chardev=openclaw-vsock"
          ];
      })
      (lib.mkIf (vm.hypervisor == "cloud-hypervisor") {
        shares = [
          {
            proto = "virtiofs";
            tag = "credproxy-host";
            source = guestDir vm.name;
            mountPoint = "/run/credproxy-host";
            readOnly = true;
          }
        ];
        cloud-hypervisor.extraArgs = ["--vsock" "socket=${hybridPath vm.name}"];
      })
      (lib.mkIf (vm.hypervisor == "firecracker") {
        firecracker.extraConfig.vsock.uds_path = hybridPath vm.name;
      })
      # dangerousDevMode: the serial console on a socket (`openclaw-vm-console <name>`).
      (lib.mkIf cfg.dangerousDevMode.enable (lib.mkMerge [
        (lib.mkIf (vm.hypervisor == "qemu") {
          qemu.serialConsole = false;
          qemu.extraArgs = [
            "-chardev"
            "socket,id=openclaw-console,path=${consoleSocket vm.name},server=on,wait=off"
            "-serial"
            "chardev:openclaw-console"
          ];
          kernelParams = ["console=ttyS0"];
        })
        (lib.mkIf (vm.hypervisor == "cloud-hypervisor") {
          cloud-hypervisor.extraArgs = ["--serial" "socket=${consoleSocket vm.name}"];
          kernelParams = ["console=ttyS0"];
        })
      ]))
    ];

    services.credproxy-guest = {
      enable = true;
      package = lib.mkDefault cp.package;
      hostVsockPort = vm.proxy.port;
      caCertificate = vm.caCertificate;
      delivery =
        if vm.hypervisor == "cloud-hypervisor"
        then {
          method = "directory";
          directory = "/run/credproxy-host";
        }
        else {method = "systemd-credentials";};
    };

    services.openclaw-guest = {
      enable = lib.mkDefault true;
      gatewayVsockPort = vm.gateway.guestVsockPort;
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
    services.getty.autologinUser = lib.mkIf cfg.dangerousDevMode.enable (lib.mkDefault config.services.openclaw-guest.agentUser);
  };

  guestConfig = vm: config.microvm.vms.${vm.name}.config.config;
in {
  options.services.openclaw-vm = {
    enable = lib.mkEnableOption "OpenClaw agent microVMs whose only egress is credproxy";

    hypervisor = mkOption {
      type = types.enum ["qemu" "cloud-hypervisor" "firecracker"];
      default = "qemu";
      description = "Default hypervisor of the VMs.";
      example = "cloud-hypervisor";
    };

    runtimeDir = mkOption {
      type = types.str;
      default = "/run/openclaw-vm";
      description = ''
        Per-VM runtime directories: `<name>/guest` (the files a guest receives at boot) and
        `<name>/sockets` (hybrid-vsock, vhost-user and console sockets), created at boot and
        before credproxy starts.
      '';
      example = "/run/openclaw-vm";
    };

    vhostDeviceVsockPackage = lib.mkPackageOption pkgs "vhost-device-vsock" {
      extraDescription = "Used for QEMU VMs with `proxy.transport = \"vsock_uds\"`.";
    };

    vms = mkOption {
      type = types.attrsOf (types.submodule vmOptions);
      default = {};
      description = "Agent VMs, by name.";
      example = literalExpression ''
        {
          agent1 = {
            cid = 4;
            identity = {
              issuer = "https://id.example/realms/openclaw";
              clientSecretFile = "/run/secrets/openclaw-agent1-client-secret";
            };
            credentials.anthropic = {
              placeholder = "agent-vault-00000000-0000-0000-0000-000000000001";
              envVar = "ANTHROPIC_API_KEY";
              settings = {
                header_name = "x-api-key";
                bound_domains = [ "api.anthropic.com" ];
                allowed_roles = [ "proxy-user" ];
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
          provisioning (AppRole, the credentials' `devDummyValue`s), agent identities from
          credproxy's dev issuer (`identity.devRoles`) for VMs without a client secret, a
          serial console socket per VM (`openclaw-vm-console <name>`) and console autologin
          in the guests.
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
            assertion = unique (map (vm: vm.cid) vmList);
            message = "services.openclaw-vm.vms: every VM needs its own cid.";
          }
          {
            assertion = unique (map (vm: vm.agentId) vmList);
            message = "services.openclaw-vm.vms: every VM needs its own agentId (a listener, its credentials and its domains are bound to it).";
          }
          {
            assertion = unique (map (vm: vm.network.tap) netVms);
            message = "services.openclaw-vm.vms: every VM needs its own network.tap.";
          }
          {
            assertion = unique (map (vm: vm.proxy.port) (lib.filter (vm: vm.proxy.transport == "vsock") vmList));
            message = "services.openclaw-vm.vms: two AF_VSOCK listeners on one port (proxy.port of VMs with proxy.transport = \"vsock\" share the host's port space); give each its own proxy.port.";
          }
          {
            assertion = unique gatewayPorts && !(lib.elem adminPort gatewayPorts) && lib.all (p: !(lib.elem p tcpListenerPorts)) gatewayPorts;
            message = "services.openclaw-vm.vms: gateway.hostPort must differ between VMs and from credproxy's admin port (${toString adminPort}) and TCP listeners (${lib.concatMapStringsSep ", " toString tcpListenerPorts}); in use: ${lib.concatMapStringsSep ", " toString gatewayPorts}.";
          }
          {
            assertion = lib.length (lib.unique (map (vm: vm.network.tailscale.interface) tsVms)) <= 1;
            message = "services.openclaw-vm.vms: every VM with network.tailscale.enable must use the same network.tailscale.interface (NAT has one external interface).";
          }
          {
            assertion = unique (lib.attrNames credentialOwner) && lib.length (lib.attrNames credentialOwner) == lib.length (lib.concatMap (vm: lib.attrNames vm.credentials) vmList);
            message = "services.openclaw-vm.vms: a credential id is used by two VMs; credentials are per VM, give each its own id.";
          }
          {
            assertion = cp.settings.policy.dir == cp.policyDirectory;
            message = ''
              services.openclaw-vm: services.credproxy.settings.policy.dir is set to ${toString cp.settings.policy.dir}, so the
              generated per-VM rules (credentials and domains of each VM are its own) would not be served.
              Put your Rego files into services.credproxy.policyFiles instead (name -> text; an "authz.rego"
              there replaces the built-in default policy).
            '';
          }
        ]
        ++ lib.concatMap (vm: let
          at = "services.openclaw-vm.vms.${vm.name}";
        in
          [
            {
              assertion = vm.proxy.transport == "vsock_uds" || vm.hypervisor == "qemu";
              message = ''
                ${at}: hypervisor "${vm.hypervisor}" does not support proxy.transport = "vsock".
                Cloud Hypervisor and Firecracker expose a hybrid-vsock Unix socket: use proxy.transport = "vsock_uds".
              '';
            }
            {
              assertion = !(vm.hypervisor == "cloud-hypervisor" && vm.proxy.port == 8888);
              message = "${at}: proxy.port 8888 is Cloud Hypervisor's systemd-notify port in microvm.nix; choose another.";
            }
            {
              assertion = !(vm.hypervisor == "qemu" && vm.memory == 2048);
              message = "${at}: memory = 2048 hangs QEMU (microvm.nix issue 171); use another size.";
            }
            {
              assertion = vm.hypervisor != "firecracker" || (vm.caCertificate != null && !(guestConfig vm).services.openclaw-guest.enable);
              message = ''
                ${at}: microvm.nix gives Firecracker neither credentialFiles nor shares, so the guest can receive
                neither the CA certificate nor the gateway token at boot. Set caCertificate (build time) and
                services.openclaw-guest.enable = false in config, or use qemu or cloud-hypervisor.
              '';
            }
            {
              assertion = agentToken vm != null;
              message = ''
                ${at}.identity: the VM's listener needs an identity: set identity.clientSecretFile with
                identity.tokenUrl or identity.issuer (the proxy obtains the agent's token; the secret stays on
                the host), or enable dangerousDevMode (dev issuer).
              '';
            }
            {
              assertion = devIdentity vm || vm.identity.clientSecretFile == null || ((vm.identity.tokenUrl != null) != (vm.identity.issuer != null));
              message = "${at}.identity: give exactly one of tokenUrl, issuer.";
            }
            {
              assertion = !(devIdentity vm) || vm.identity.clientSecretFile == null;
              message = "${at}.identity.clientSecretFile is set, but dangerousDevMode gives every VM an identity from credproxy's dev issuer (and credproxy then trusts only that issuer); remove it, or turn dangerousDevMode off.";
            }
            {
              assertion = vm.network == null || config.systemd.network.enable;
              message = "${at}.network: the host TAP is configured with systemd-networkd; set systemd.network.enable = true.";
            }
          ]
          ++ lib.mapAttrsToList (id: c: {
            assertion = (c.settings.allowed_roles or []) != [];
            message = "${at}.credentials.${id}.settings.allowed_roles is empty: the default policy refuses every use of a credential no role may use. List the roles (from your identity provider, or identity.devRoles in dangerousDevMode).";
          })
          vm.credentials
          ++ lib.optionals (devIdentity vm) (lib.mapAttrsToList (id: c: {
              assertion = lib.any (r: lib.elem r vm.identity.devRoles) (c.settings.allowed_roles or []);
              message = "${at}.credentials.${id}: none of its allowed_roles (${lib.concatStringsSep ", " (c.settings.allowed_roles or [])}) is in identity.devRoles (${lib.concatStringsSep ", " vm.identity.devRoles}); the dev agent could never use it.";
            })
            vm.credentials))
        vmList
        ++ cplib.secretPathAssertions (lib.concatMap (vm: [
            {
              what = "services.openclaw-vm.vms.${vm.name}.identity.clientSecretFile";
              value = vm.identity.clientSecretFile;
            }
            {
              what = "services.openclaw-vm.vms.${vm.name}.gateway.tokenFile";
              value = vm.gateway.tokenFile;
            }
          ])
          vmList);

      services.credproxy = {
        enable = true;
        settings = {
          listeners = map listener vmList;
          allowed_domains = lib.unique (lib.concatMap (vm: vm.allowedDomains) vmList);
          credentials = cplib.credproxyCredentials vmList;
        };
        policyFiles = lib.mkIf (vmList != []) {
          "openclaw_vms.rego" = policyRules;
          "openclaw_vms_test.rego" = policyTests;
        };
        loadCredential =
          lib.listToAttrs (map (vm: lib.nameValuePair (clientSecretCredential vm.name) vm.identity.clientSecretFile)
            (lib.filter (vm: !(devIdentity vm) && vm.identity.clientSecretFile != null) vmList));
      };

      users.groups = lib.listToAttrs (map (vm: lib.nameValuePair (group vm.name) {}) vmList);
      # credproxy listens in, and the gateway bridges connect to, each VM's socket directory.
      users.users.credproxy.extraGroups = map (vm: group vm.name) (lib.filter (vm: vm.proxy.transport == "vsock_uds") vmList);

      systemd.tmpfiles.rules =
        [
          "d ${cfg.runtimeDir} 0755 root root - -"
          "d ${hostStateDir} 0755 root root - -"
        ]
        ++ lib.concatMap (vm: [
          "d ${vmRunDir vm.name} 0750 root ${group vm.name} - -"
          "d ${guestDir vm.name} 0750 root ${group vm.name} - -"
          "d ${socketDir vm.name} 2770 root ${group vm.name} - -"
          "d ${vmStateDir vm.name} 0700 root root - -"
        ])
        vmList;

      # The listener directories exist before credproxy binds (also after a manual cleanup):
      # one VM's missing directory must not stop the proxy for every VM.
      systemd.services = lib.mkMerge ([
          {
            credproxy = {
              serviceConfig.ExecStartPre = ["+${lib.getExe' pkgs.systemd "systemd-tmpfiles"} --create --prefix=${cfg.runtimeDir}"];
              after = ["systemd-tmpfiles-setup.service"];
            };
          }
        ]
        ++ map (vm:
          lib.mkMerge [
            {
              "microvm@${vm.name}" = {
                after = ["credproxy.service" "openclaw-vm-${vm.name}-guest-files.service"] ++ lib.optional (isVhostUser vm) "openclaw-vm-${vm.name}-vhost-vsock.service";
                wants = ["credproxy.service"];
                requires = ["openclaw-vm-${vm.name}-guest-files.service"] ++ lib.optional (isVhostUser vm) "openclaw-vm-${vm.name}-vhost-vsock.service";
                serviceConfig = {
                  # This VM's files and sockets, and no other VM's.
                  SupplementaryGroups = [(group vm.name)];
                  # Sockets the hypervisor creates are usable by the VM's group.
                  UMask = "0007";
                };
              };

              "openclaw-vm-${vm.name}-guest-files" = {
                description = "Files the ${vm.name} guest receives at boot (CA certificate, placeholders, gateway token)";
                partOf = ["microvm@${vm.name}.service"];
                after = ["credproxy-ca-init.service" "systemd-tmpfiles-setup.service"];
                wants = ["credproxy-ca-init.service"];
                path = [pkgs.coreutils];
                script = ''
                  set -euo pipefail
                  umask 0077
                  ${lib.optionalString (vm.gateway.tokenFile == null) ''
                    # A gateway token of its own, generated once, kept on the host.
                    if [ ! -s ${generatedTokenFile vm.name} ]; then
                      head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > ${generatedTokenFile vm.name}.new
                      mv ${generatedTokenFile vm.name}.new ${generatedTokenFile vm.name}
                    fi
                  ''}
                  d=${guestDir vm.name}
                  install -d -m 0750 -o root -g ${group vm.name} "$d"
                  ${lib.concatStrings (lib.mapAttrsToList (n: src: ''
                      install -m 0440 -o root -g ${group vm.name} "${src}" "$d/${n}.new"
                      mv -f "$d/${n}.new" "$d/${n}"
                    '')
                    (guestFileSources vm))}
                '';
                serviceConfig = {
                  Type = "oneshot";
                  RemainAfterExit = true;
                  LoadCredential = lib.optional (vm.gateway.tokenFile != null) "gateway-token:${toString vm.gateway.tokenFile}";
                  ProtectSystem = "strict";
                  ReadWritePaths = [(vmRunDir vm.name) (vmStateDir vm.name)];
                  ProtectHome = true;
                  PrivateTmp = true;
                  PrivateNetwork = true;
                  NoNewPrivileges = true;
                  CapabilityBoundingSet = ["CAP_CHOWN" "CAP_FOWNER" "CAP_DAC_OVERRIDE"];
                  RestrictAddressFamilies = "none";
                  SystemCallArchitectures = "native";
                  UMask = "0077";
                };
              };
            }
            (lib.mkIf (isVhostUser vm) {
              "openclaw-vm-${vm.name}-vhost-vsock" = {
                description = "vhost-user-vsock device of ${vm.name} (hybrid vsock on ${hybridPath vm.name})";
                partOf = ["microvm@${vm.name}.service"];
                before = ["microvm@${vm.name}.service"];
                after = ["systemd-tmpfiles-setup.service"];
                serviceConfig =
                  cplib.hardening.bridge
                  // {
                    ExecStart = lib.escapeShellArgs [
                      (lib.getExe' cfg.vhostDeviceVsockPackage "vhost-device-vsock")
                      "--guest-cid"
                      (toString vm.cid)
                      "--socket"
                      (vhostUserSocket vm.name)
                      "--uds-path"
                      (hybridPath vm.name)
                    ];
                    # QEMU connects to the socket as soon as it starts: wait until it exists.
                    ExecStartPost = "${pkgs.writeShellScript "wait-for-vhost-user-socket" ''
                      for _ in $(seq 1 200); do [ -S ${vhostUserSocket vm.name} ] && exit 0; sleep 0.05; done
                      echo "vhost-device-vsock did not create ${vhostUserSocket vm.name}" >&2; exit 1
                    ''}";
                    DynamicUser = true;
                    SupplementaryGroups = [(group vm.name)];
                    ReadWritePaths = [(socketDir vm.name)];
                    UMask = "0007";
                    RestrictAddressFamilies = ["AF_UNIX"];
                    Restart = "on-failure";
                  };
              };
            })
            (lib.mkIf (vm.gateway.hostPort != null) {
              "openclaw-vm-${vm.name}-gateway" = {
                description = "Host access to the ${vm.name} gateway (loopback TCP to the guest over VSOCK)";
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
                    SupplementaryGroups = lib.optional (vm.proxy.transport == "vsock_uds") (group vm.name);
                    ReadWritePaths = lib.optional (vm.proxy.transport == "vsock_uds") (socketDir vm.name);
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
              tailscale =
                if vm.network.tailscale.enable
                then {inherit (vm.network.tailscale) interface destinations;}
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

      networking.nat = lib.mkIf (tsVms != []) {
        enable = true;
        internalInterfaces = map (vm: vm.network.tap) tsVms;
        externalInterface = (builtins.head tsVms).network.tailscale.interface;
      };
    }

    # Declared only when microvm.nix's host module is imported (asserted above), so a missing
    # module gives the assertion's message rather than "option does not exist".
    (lib.optionalAttrs (options ? microvm.vms) {
      microvm.vms =
        lib.mapAttrs (name: vm: {
          inherit (vm) autostart;
          config = guestModule (vm // {inherit name;});
        })
        vms;
    })

    (lib.mkIf cfg.dangerousDevMode.enable {
      warnings = [
        ''
          ############################################################################
          services.openclaw-vm.dangerousDevMode is ON. This host runs an in-memory OpenBao
          with a root token, a Temporal dev server, dummy credentials, agent identities
          from credproxy's dev issuer, and a root console socket per VM with autologin
          in the guest. NEVER use this with real credentials.
          ############################################################################
        ''
      ];

      services.credproxy = {
        ca.generate = true;
        temporal.dev.enable = true;
        # The dev issuer's key (created by credproxy on first start, 0600) signs each VM
        # listener's agent tokens; a listener with agent_token.dev_issuer makes the proxy
        # trust it. Nothing else can mint these tokens.
        settings.identity.oidc = lib.mkDefault {
          issuer = "credproxy-dev";
          audiences = ["credproxy"];
        };
        openbao.dev = {
          enable = true;
          seed = lib.listToAttrs (lib.concatMap (vm:
            lib.mapAttrsToList (_: c: lib.nameValuePair c.settings.source.openbao.path {key = c.devDummyValue;})
            (lib.filterAttrs (_: c: c.devDummyValue != null && (c.settings.source or {}) ? openbao) vm.credentials))
          vmList);
        };
      };

      # `openclaw-vm-console <name>`: the guest's serial console (Ctrl-] to leave).
      environment.systemPackages = [
        (pkgs.writeShellScriptBin "openclaw-vm-console" ''
          set -eu
          if [ $# -ne 1 ]; then
            echo "usage: openclaw-vm-console VM  (one of: ${lib.concatMapStringsSep " " (vm: vm.name) vmList})" >&2
            exit 64
          fi
          exec ${lib.getExe' pkgs.socat "socat"} -,rawer,escape=0x1d UNIX-CONNECT:${cfg.runtimeDir}/"$1"/sockets/console.sock
        '')
      ];
    })
  ]);
}
