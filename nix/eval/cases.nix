# The harness's cases: hosts to evaluate and run, one configuration per assertion that must
# trip it, and the named regression checks for the defects of issue 14 (each named after what
# it guards). nix/eval/run prints them all and fails on any failure.
{
  lib,
  hosts,
  flake,
}: let
  inherit (hosts) base credential openclawPackage issuer containerPackage instance containersBase;
  storePath = "${builtins.storeDir}/00000000000000000000000000000000-secret";
  vm1 = cfg: {services.openclaw-vm.vms.agent1 = cfg;};
  # One assertion case: the base host plus `extra`; `expect` is a piece of the one message
  # that must appear.
  case = expect: extra: {
    inherit expect;
    modules = [base extra];
  };
  # The same for services.credproxy alone (no VMs).
  proxyOnly = {
    networking.hostName = "proxy";
    system.stateVersion = "25.11";
    services.credproxy = {
      enable = true;
      settings = {
        listeners = [
          {
            name = "local";
            tcp = "127.0.0.1:18790";
          }
        ];
        identity.oidc.issuer = issuer;
      };
    };
  };
  proxyCase = expect: extra: {
    inherit expect;
    modules = [proxyOnly extra];
  };
  listener = l: {services.credproxy.settings.listeners = lib.mkForce [l];};
  # services.openclaw-containers alone (the flake's default module, no microvm.nix needed).
  containerCase = expect: extra: {
    inherit expect;
    noMicrovm = true;
    modules = [containersBase containerPackage {services.openclaw-containers.enable = true;} extra];
  };
  twoInstances = overrides: {
    services.openclaw-containers.instances =
      lib.recursiveUpdate {
        a = instance "a" "alpha" 21;
        b = instance "b" "beta" 22;
      }
      overrides;
  };
  devToken = {
    dev_issuer = {
      key_file = "/var/lib/credproxy/dev-issuer/dev-issuer-key.pem";
      roles = ["proxy-user"];
    };
  };
in {
  hosts = {
    base = [base];
    inherit (hosts) three-vms dev-two-vms vhost-user firecracker containers containers-and-vms containers-dev;
    # The microVM test's host, with its default parameters.
    test-host = [(import ./test-host.nix {})];
    # The container test's host, with its default parameters.
    container-test-host = [(import ./container-test-host.nix {})];
    # The guest modules on their own (a VM defined elsewhere), through the flake's wrapper.
    guest-modules = [
      flake.nixosModules.openclaw-vm-guest
      openclawPackage
      {
        networking.hostName = "guest";
        system.stateVersion = "25.11";
        services.openclaw-guest.enable = true;
        services.credproxy-guest = {
          enable = true;
          hostVsockPort = 18794;
        };
      }
    ];
    # Lifecycle: the base host with a second VM, and with only a credential changed.
    base-plus-vm = [
      base
      {
        services.openclaw-vm.vms.agent9 = {
          cid = 9;
          identity = {
            inherit issuer;
            clientSecretFile = "/run/secrets/openclaw-agent9-client-secret";
          };
          config = openclawPackage;
        };
      }
    ];
    base-new-credential = [
      base
      (vm1 {credentials.alpha2 = credential "alpha" 11;})
    ];
  };

  # One configuration per assertion, each tripping exactly that assertion.
  assertions = {
    # modules/credproxy.nix
    credproxy-secret-in-store = proxyCase "would put a secret into the Nix store" {services.credproxy.loadCredential.x = storePath;};
    credproxy-secret-path-literal = proxyCase "loadCredential.y = " {services.credproxy.loadCredential.y = ./secret-that-must-not-be-copied;};
    credproxy-listener-two-addresses = proxyCase "needs exactly one of tcp, unix, vsock, vsock_uds" (listener {
      name = "two";
      tcp = "127.0.0.1:1";
      unix = "/run/x.sock";
    });
    credproxy-agent-token-without-agent = proxyCase "agent_token needs `agent`" (listener {
      name = "a";
      unix = "/run/credproxy/a.sock";
      agent_token = devToken;
    });
    credproxy-agent-token-on-tcp = proxyCase "agent_token only on a listener that identifies its peer" (listener {
      name = "a";
      tcp = "127.0.0.1:18790";
      agent = "a";
      agent_token = devToken;
    });
    credproxy-agent-token-vsock-without-peer-cid = proxyCase "agent_token only on a listener that identifies its peer" (listener {
      name = "a";
      vsock.port = 18790;
      agent = "a";
      agent_token = devToken;
    });
    credproxy-agent-token-unix-without-peer-uids = proxyCase "agent_token on a unix listener needs peer_uids" (listener {
      name = "a";
      unix = "/run/credproxy/a.sock";
      agent = "a";
      agent_token = devToken;
    });
    credproxy-agent-token-two-sources = proxyCase "needs exactly one of client_credentials, dev_issuer" (listener {
      name = "a";
      unix = "/run/credproxy/a.sock";
      agent = "a";
      agent_token =
        devToken
        // {
          client_credentials = {
            token_url = "https://id.example/token";
            client_id = "a";
            client_secret_file = "/run/credentials/credproxy.service/a";
          };
        };
    });
    credproxy-client-credentials-url-and-issuer = proxyCase "needs exactly one of token_url, issuer" (listener {
      name = "a";
      unix = "/run/credproxy/a.sock";
      agent = "a";
      agent_token.client_credentials = {
        token_url = "https://id.example/token";
        inherit issuer;
        client_id = "a";
        client_secret_file = "/run/credentials/credproxy.service/a";
      };
    });
    credproxy-credential-two-sources = proxyCase "source needs exactly one of openbao, file, env" {
      services.credproxy.settings.credentials = [
        {
          id = "x";
          placeholder = "agent-vault-00000000-0000-0000-0000-000000000099";
          bound_domains = ["x.example"];
          allowed_roles = ["r"];
          source = {
            env = "X";
            file = "/run/credentials/credproxy.service/x";
          };
        }
      ];
    };
    credproxy-no-listener = proxyCase "at least one listener is required" {services.credproxy.settings.listeners = lib.mkForce [];};
    credproxy-openbao-source-without-openbao = proxyCase "reads from OpenBao but services.credproxy.settings.secrets.openbao is not set" {
      services.credproxy.settings.credentials = [
        {
          id = "x";
          placeholder = "agent-vault-00000000-0000-0000-0000-000000000099";
          bound_domains = ["x.example"];
          allowed_roles = ["r"];
          source.openbao.path = "x";
        }
      ];
    };
    credproxy-vsock-port-twice = proxyCase "two AF_VSOCK listeners use the same port" {
      services.credproxy.settings.listeners = lib.mkForce [
        {
          name = "a";
          vsock.port = 18790;
        }
        {
          name = "b";
          vsock.port = 18790;
        }
      ];
    };
    credproxy-credential-without-roles = proxyCase "no role may use it" {
      services.credproxy.settings.credentials = [
        {
          id = "x";
          placeholder = "agent-vault-00000000-0000-0000-0000-000000000099";
          bound_domains = ["x.example"];
          source.env = "X";
        }
      ];
    };

    # modules/credproxy-openbao.nix
    openbao-admin-token-in-store = proxyCase "apply.adminTokenFile = " {
      services.credproxy-openbao = {
        enable = true;
        apply.adminTokenFile = storePath;
      };
    };
    openbao-apply-without-token = proxyCase "apply.enable needs services.credproxy-openbao.apply.adminTokenFile" {
      services.credproxy-openbao = {
        enable = true;
        apply.enable = true;
      };
    };

    # modules/openclaw-vm.nix
    vm-without-microvm-host = {
      expect = "needs microvm.nix's host module";
      noMicrovm = true;
      modules = [base];
    };
    vm-cid-twice = case "every VM needs its own cid" {
      services.openclaw-vm.vms.agent2 = {
        cid = 4;
        proxy.port = 18999;
        identity = {
          inherit issuer;
          clientSecretFile = "/run/secrets/c2";
        };
        config = openclawPackage;
      };
    };
    vm-agent-id-twice = case "every VM needs its own agentId" {
      services.openclaw-vm.vms.agent2 = {
        cid = 5;
        agentId = "agent1";
        identity = {
          inherit issuer;
          clientSecretFile = "/run/secrets/c2";
        };
        config = openclawPackage;
      };
    };
    vm-tap-twice = case "every VM needs its own network.tap" {
      systemd.network.enable = true;
      services.openclaw-vm.vms = {
        agent1.network = {
          tap = "vm-x";
          mac = "02:00:00:00:00:01";
          hostAddress = "10.88.1.1/24";
          guestAddress = "10.88.1.2/24";
        };
        agent2 = {
          cid = 5;
          identity = {
            inherit issuer;
            clientSecretFile = "/run/secrets/c2";
          };
          network = {
            tap = "vm-x";
            mac = "02:00:00:00:00:02";
            hostAddress = "10.88.2.1/24";
            guestAddress = "10.88.2.2/24";
          };
          config = openclawPackage;
        };
      };
    };
    vm-vsock-port-twice = case "two AF_VSOCK listeners on one port" {
      services.openclaw-vm.vms.agent2 = {
        cid = 5;
        proxy.port = 18794;
        identity = {
          inherit issuer;
          clientSecretFile = "/run/secrets/c2";
        };
        config = openclawPackage;
      };
    };
    vm-gateway-port-twice = case "gateway.hostPort must differ between VMs" {
      services.openclaw-vm.vms.agent2 = {
        cid = 5;
        identity = {
          inherit issuer;
          clientSecretFile = "/run/secrets/c2";
        };
        gateway.hostPort = 18789;
        config = openclawPackage;
      };
    };
    vm-gateway-port-is-admin-port = case "gateway.hostPort must differ between VMs and from credproxy's admin port" (vm1 {gateway.hostPort = lib.mkForce 18791;});
    vm-gateway-port-is-a-listener-port = case "gateway.hostPort must differ between VMs and from credproxy's admin port (18791) and TCP listeners (18800)" {
      services.credproxy.settings.listeners = [
        {
          name = "local";
          tcp = "127.0.0.1:18800";
        }
      ];
      services.openclaw-vm.vms.agent1.gateway.hostPort = lib.mkForce 18800;
    };
    vm-tailscale-interfaces-differ = case "must use the same network.tailscale.interface" {
      systemd.network.enable = true;
      services.openclaw-vm.vms = {
        agent1.network = {
          mac = "02:00:00:00:00:01";
          hostAddress = "10.88.1.1/24";
          guestAddress = "10.88.1.2/24";
          tailscale.enable = true;
        };
        agent2 = {
          cid = 5;
          identity = {
            inherit issuer;
            clientSecretFile = "/run/secrets/c2";
          };
          network = {
            mac = "02:00:00:00:00:02";
            hostAddress = "10.88.2.1/24";
            guestAddress = "10.88.2.2/24";
            tailscale = {
              enable = true;
              interface = "ts1";
            };
          };
          config = openclawPackage;
        };
      };
    };
    vm-credential-id-twice = case "a credential id is used by two VMs" {
      services.openclaw-vm.vms.agent2 = {
        cid = 5;
        identity = {
          inherit issuer;
          clientSecretFile = "/run/secrets/c2";
        };
        credentials.alpha = credential "alpha" 2;
        config = openclawPackage;
      };
    };
    vm-policy-dir-overridden = case "the\ngenerated per-VM rules" {services.credproxy.settings.policy.dir = "/etc/my-policy";};
    vm-cloud-hypervisor-over-af-vsock = case "does not support proxy.transport = \"vsock\"" (vm1 {
      hypervisor = "cloud-hypervisor";
      proxy.transport = "vsock";
    });
    vm-cloud-hypervisor-notify-port = case "proxy.port 8888 is Cloud Hypervisor's systemd-notify port" (vm1 {
      hypervisor = "cloud-hypervisor";
      proxy.port = 8888;
    });
    vm-qemu-2048 = case "memory = 2048 hangs QEMU" (vm1 {memory = 2048;});
    vm-firecracker-without-ca = case "microvm.nix gives Firecracker neither credentialFiles nor shares" (vm1 {hypervisor = "firecracker";});
    vm-without-identity = case "the VM's listener needs an identity" (vm1 {identity.clientSecretFile = lib.mkForce null;});
    vm-identity-url-and-issuer = case "give exactly one of tokenUrl, issuer" (vm1 {identity.tokenUrl = "https://id.example/token";});
    vm-dev-mode-with-client-secret = case "but dangerousDevMode gives every VM an identity from credproxy's dev issuer" {services.openclaw-vm.dangerousDevMode.enable = true;};
    vm-network-without-networkd = case "the host TAP is configured with systemd-networkd" (vm1 {
      network = {
        mac = "02:00:00:00:00:01";
        hostAddress = "10.88.1.1/24";
        guestAddress = "10.88.1.2/24";
      };
    });
    vm-credential-without-roles = case "credentials.alpha.settings.allowed_roles is empty" (vm1 {credentials.alpha.settings.allowed_roles = lib.mkForce [];});
    vm-dev-roles-miss-credential = {
      expect = "none of its allowed_roles (admin) is in identity.devRoles";
      modules = [
        {
          networking.hostName = "dev";
          system.stateVersion = "25.11";
          services.openclaw-vm = {
            enable = true;
            dangerousDevMode.enable = true;
            vms.dev1 = {
              cid = 7;
              credentials.alpha = lib.recursiveUpdate (credential "alpha" 1) {settings.allowed_roles = ["admin"];};
              config = openclawPackage;
            };
          };
        }
      ];
    };
    vm-client-secret-in-store = case "identity.clientSecretFile = ${storePath}" (vm1 {identity.clientSecretFile = lib.mkForce storePath;});
    vm-gateway-token-in-store = case "gateway.tokenFile = ${storePath}" (vm1 {gateway.tokenFile = storePath;});

    # modules/openclaw-vm-guest.nix (through a VM's config)
    guest-without-openclaw-package = case "services.openclaw-guest.package is not set" (vm1 {config = lib.mkForce {};});
    # modules/openclaw-containers.nix
    containers-no-instance = containerCase "with no instance" {};
    containers-host-port-clash = containerCase "the host ports (ports.gateway, ports.webchat) must differ" (twoInstances {
      a.ports.gateway = 18801;
      b.ports.webchat = 18801;
    });
    containers-host-port-is-admin-port = containerCase "the host ports (ports.gateway, ports.webchat) must differ" (twoInstances {
      a.ports.gateway = 18791;
    });
    containers-client-secret-in-store = containerCase "instances.a.identity.clientSecretFile = ${storePath} would put a secret into the Nix store" (twoInstances {
      a.identity.clientSecretFile = storePath;
    });
    containers-gateway-token-path-literal = containerCase "instances.b.gateway.tokenFile = " (twoInstances {
      b.gateway.tokenFile = ./secret-that-must-not-be-copied;
    });
    containers-secret-in-openclaw-settings = containerCase "gateway.auth.token would put a secret into the Nix store" (twoInstances {
      a.openclaw.settings.gateway.auth.token = "literal-token";
    });
    containers-subuid-ranges-overlap = containerCase "subuid ranges overlap (a and b)" (twoInstances {
      b.subUidStart = 300000 + 1000;
    });
    containers-uid-inside-a-subuid-range = containerCase "falls inside a subuid range; uids and subuid ranges must be apart" (twoInstances {
      a.uid = 1000;
      b.subUidStart = 999;
      a.subUidStart = 500000;
    });
    containers-same-uid = containerCase "every instance needs its own uid" (twoInstances {
      a.uid = 31000;
      b.uid = 31000;
    });
    containers-same-agent = containerCase "every instance needs its own agentId" (twoInstances {
      b.agentId = "a";
    });
    containers-credential-twice = containerCase "a credential id is used by two instances" (twoInstances {
      b.credentials.alpha-a = {
        placeholder = "agent-vault-00000000-0000-0000-0000-000000000099";
        settings = {
          bound_domains = ["api.alpha.example"];
          allowed_roles = ["proxy-user"];
          source.env = "X";
        };
      };
    });
    containers-no-identity = containerCase "the instance's listener needs an identity" (twoInstances {
      a.identity.clientSecretFile = lib.mkForce null;
    });
    containers-credential-for-the-hub = containerCase "a credential is bound to the hub's name" (twoInstances {
      a.credentials.alpha-a.settings.bound_domains = lib.mkForce ["hub.openclaw.internal"];
    });
    containers-ca-key-as-certificate = containerCase "is credproxy's CA key" {
      services.openclaw-containers = {
        caCertificate = "/var/lib/credproxy/ca/ca.key";
        instances.a = instance "a" "alpha" 21;
      };
    };

    guest-token-in-settings = case "settings.gateway.auth.token would put the token into the Nix store" (vm1 {config.services.openclaw-guest.settings.gateway.auth.token = "t";});
    guest-without-credproxy-guest = case "needs services.credproxy-guest.enable" (vm1 {config.services.credproxy-guest.enable = lib.mkForce false;});
  };

  # Named regression checks; each returns a list of { name; ok; detail; }.
  checks = {
    hosts,
    evalHost,
    report,
    flake,
    nixosTests,
  }: let
    check = name: ok: detail: {inherit name ok detail;};
    three = hosts.three-vms;
    dev = hosts.dev-two-vms;
    baseH = hosts.base;
    listeners = r: r.credproxy.settings.listeners;
    byName = r: lib.listToAttrs (map (l: lib.nameValuePair l.name l) (listeners r));
    svc = r: n: r.services.${n} or {};
    words = s: lib.filter (w: w != "") (lib.splitString " " s);
    vsockListenPorts = r:
      map (l: l.vsock.port) (lib.filter (l: l ? vsock) (listeners r))
      ++ lib.concatMap (s: let
        argv = words (s.serviceConfig.ExecStart or "");
      in
        lib.optional (lib.length argv > 2 && builtins.elemAt argv 1 == "bridge" && lib.hasPrefix "vsock:" (builtins.elemAt argv 2))
        (builtins.elemAt argv 2)) (lib.attrValues r.services);
    testVm = flake.nixosConfigurations.test-vm.config;
    testVmR = report flake.nixosConfigurations.test-vm;
  in {
    # Defect 1: the package's source filter left out a file the build includes. The runner
    # checks every include_str!/include_bytes! target against this source.
    package-source-has-every-included-file = [
      (check "the package source is a store path" (lib.hasPrefix builtins.storeDir (toString flake.packages.x86_64-linux.credproxy.src)) (toString flake.packages.x86_64-linux.credproxy.src))
    ];

    # Defect 2: the NixOS tests' configs (identity, credproxy on PATH, roles). The runner
    # also realises each node (check-config runs) and compiles each testScript.
    nixos-tests-nodes-are-complete = lib.concatLists (lib.mapAttrsToList (tname: t:
      lib.concatLists (lib.mapAttrsToList (nname: node: let
        c = node.config.services.credproxy or {enable = false;};
      in
        lib.optionals c.enable [
          (check "${tname}.${nname}: identity configured" (c.settings.identity.oidc != null) "")
          (check "${tname}.${nname}: credproxy on PATH" (lib.elem c.package node.config.environment.systemPackages) "")
          (check "${tname}.${nname}: every credential has allowed_roles" (lib.all (x: (x.allowed_roles or null) != null && x.allowed_roles != []) c.settings.credentials) "")
        ])
      t.nodes))
    nixosTests);

    # Defect 3: a production guest has no network and must still get a token. The token is
    # obtained on the host for the VM's listener (D1); nothing of it is in the guest.
    production-guest-gets-its-token-on-the-host = let
      l = (byName baseH).vm-agent1;
      cc = l.agent_token.client_credentials or {};
      g = baseH.guests.agent1;
      bridge = (svc g "credproxy-bridge").serviceConfig.ExecStart or "";
    in [
      (check "listener vm-agent1 is bound to agent1" (l.agent or null == "agent1") (builtins.toJSON l))
      (check "listener vm-agent1 obtains the token by client credentials" (cc.client_id or null == "agent1" && cc.issuer or null == issuer) (builtins.toJSON cc))
      (check "the client secret is a systemd credential of credproxy.service" (cc.client_secret_file or "" == "/run/credentials/credproxy.service/vm-agent1-client-secret" && baseH.credproxy.loadCredential.vm-agent1-client-secret or null == "/run/secrets/openclaw-agent1-client-secret") (builtins.toJSON baseH.credproxy.loadCredential))
      (check "the guest bridge carries no token and no secret" (!(lib.hasInfix "--oidc" bridge) && !(lib.hasInfix "--token" bridge) && !(lib.hasInfix "secret" bridge) && ((svc g "credproxy-bridge").serviceConfig.LoadCredential or []) == []) bridge)
      (check "no client secret reaches the guest" (!(lib.any (n: lib.hasInfix "secret" n) (lib.attrNames g.runner.credentialFiles))) (builtins.toJSON g.runner.credentialFiles))
    ];

    # Defect 4: dev mode authenticates agents (dev issuer), with no file that is never made.
    dev-mode-authenticates-agents = let
      ls = listeners testVmR;
      cred = builtins.head testVmR.credproxy.settings.credentials;
      dt = (builtins.head ls).agent_token.dev_issuer or {};
    in [
      (check "identity.oidc is the dev issuer" (testVmR.credproxy.settings.identity.oidc.issuer == "credproxy-dev") (builtins.toJSON testVmR.credproxy.settings.identity))
      (check "every VM listener has a dev_issuer agent_token" (lib.all (l: l ? agent_token.dev_issuer) ls) (builtins.toJSON ls))
      (check "the dev token's roles may use the test credential" (lib.any (r: lib.elem r (dt.roles or [])) (cred.allowed_roles or [])) (builtins.toJSON [dt cred]))
      (check "no OIDC client secret file is expected (none is created)" (!(lib.any (n: lib.hasInfix "client-secret" n) (lib.attrNames testVmR.guests.agent1.runner.credentialFiles)) && testVmR.credproxy.loadCredential == {}) "")
      (check "every file a guest receives is written by its guest-files unit" (lib.all (vm: let
        gf = (svc testVmR "openclaw-vm-${vm}-guest-files").script or "";
      in
        lib.all (n: lib.hasInfix "/${n}" gf) (lib.attrNames testVmR.guests.${vm}.runner.credentialFiles))
      (lib.attrNames testVmR.guests)) "")
      (check "the test-vm credential is seeded in the dev OpenBao" (testVm.services.credproxy.openbao.dev.seed ? "openclaw/credentials/httpbin") "")
    ];

    # Defect 5: Cloud Hypervisor / Firecracker bridges use endpoints `credproxy bridge` takes;
    # the runner runs every bridge command line with --check. Here: the paths line up.
    hybrid-vsock-paths-line-up = let
      l = (byName three).vm-agent2;
      chArgs = three.guests.agent2.runner.cloudHypervisorExtraArgs;
      gw = (svc three "openclaw-vm-agent2-gateway").serviceConfig.ExecStart or "";
      fl = (byName hosts.firecracker).vm-agent1;
      vu = (byName hosts.vhost-user).vm-agent1;
      vhost = (svc hosts.vhost-user "openclaw-vm-agent1-vhost-vsock").serviceConfig.ExecStart or "";
    in [
      (check "cloud-hypervisor's --vsock socket is the listener's vsock_uds path" (lib.elem "socket=${l.vsock_uds.path}" chArgs) (builtins.toJSON [l chArgs]))
      (check "the cloud-hypervisor gateway bridge connects with vsock_uds:PATH:PORT" (lib.hasSuffix "vsock_uds:${l.vsock_uds.path}:18789" gw) gw)
      (check "firecracker's uds_path is the listener's vsock_uds path" (hosts.firecracker.guests.agent1.runner.firecrackerVsock.uds_path or null == fl.vsock_uds.path) (builtins.toJSON hosts.firecracker.guests.agent1.runner.firecrackerVsock))
      (check "vhost-device-vsock's --uds-path is the listener's vsock_uds path" (lib.hasInfix "--uds-path ${vu.vsock_uds.path}" vhost) vhost)
      (check "the vhost-user QEMU guest has no kernel vhost-vsock device" (hosts.vhost-user.guests.agent1.runner.vsockCid == null && lib.any (lib.hasPrefix "vhost-user-vsock-pci,") hosts.vhost-user.guests.agent1.runner.qemuExtraArgs) (builtins.toJSON hosts.vhost-user.guests.agent1.runner.qemuExtraArgs))
    ];

    # Defect 6: VMs are isolated from each other.
    vms-are-isolated = let
      ls = byName three;
      gid = vm: "openclaw-vm-${vm}";
    in [
      (check "each AF_VSOCK listener accepts its VM's CID only" ((ls.vm-agent1.vsock.peer_cid or null) == 4 && (ls.vm-agent3.vsock.peer_cid or null) == 6) (builtins.toJSON [ls.vm-agent1 ls.vm-agent3]))
      (check "each hybrid-vsock VM has a socket path of its own" (lib.length (lib.unique (map (l: l.vsock_uds.path) (lib.filter (l: l ? vsock_uds) (listeners three)))) == lib.length (lib.filter (l: l ? vsock_uds) (listeners three))) "")
      (check "each listener carries its own VM's agent" (lib.all (vm: ls."vm-${vm}".agent == vm) ["agent1" "agent2" "agent3"]) "")
      (check "each VM's credentials are granted to its own agent only" (lib.all (c: lib.length (c.allowed_agents or []) == 1) three.credproxy.settings.credentials && lib.any (c: c.allowed_agents == ["agent2"]) three.credproxy.settings.credentials) (builtins.toJSON (map (c: {
          inherit (c) id;
          allowed_agents = c.allowed_agents or null;
        })
        three.credproxy.settings.credentials)))
      (check "the policy directory holds the generated per-VM rules" (three.credproxy.policyDir != null) "")
      (check "each hypervisor runs with its own VM's group and no other" (lib.all (vm: (svc three "microvm@${vm}").serviceConfig.SupplementaryGroups == [(gid vm)]) ["agent1" "agent2" "agent3"]) "")
      (check "guest files are root:<vm group> 0750/0440" (lib.all (vm: lib.elem "d /run/openclaw-vm/${vm}/guest 0750 root ${gid vm} - -" three.tmpfiles && lib.hasInfix "install -m 0440 -o root -g ${gid vm}" ((svc three "openclaw-vm-${vm}-guest-files").script or "")) ["agent1" "agent2" "agent3"]) "")
      (check "QEMU credential files come from the VM's own directory" (lib.all (p: lib.hasPrefix "/run/openclaw-vm/agent1/guest/" p) (lib.attrValues three.guests.agent1.runner.credentialFiles)) (builtins.toJSON three.guests.agent1.runner.credentialFiles))
      (check "the Cloud Hypervisor share is the VM's own directory" (map (s: s.source) three.guests.agent2.runner.shares == ["/run/openclaw-vm/agent2/guest"]) "")
    ];

    # Defect 7: lifecycle.
    listener-changes-restart-credproxy = [
      (check "adding a VM changes credproxy's restart triggers" (hosts.base-plus-vm.credproxy.restartTriggers != baseH.credproxy.restartTriggers) "")
      (check "a new credential only reloads" (hosts.base-new-credential.credproxy.restartTriggers == baseH.credproxy.restartTriggers && hosts.base-new-credential.credproxy.reloadTriggers != baseH.credproxy.reloadTriggers) "")
    ];
    missing-vm-directory-does-not-stop-the-proxy = let
      dirs = lib.unique (map (l: dirOf l.vsock_uds.path) (lib.filter (l: l ? vsock_uds) (listeners three)));
      pre = (svc three "credproxy").serviceConfig.ExecStartPre or [];
    in [
      (check "every hybrid-vsock listener directory has a tmpfiles rule" (lib.all (d: lib.any (r: lib.hasPrefix "d ${d} " r) three.tmpfiles) dirs) (builtins.toJSON dirs))
      (check "credproxy recreates the VM directories before it starts" (lib.any (c: lib.hasInfix "systemd-tmpfiles --create --prefix=/run/openclaw-vm" c) pre) (builtins.toJSON pre))
      (check "no listener lives in a microvm.nix state directory (created by the VM's install unit)" (lib.all (d: !(lib.hasPrefix "/var/lib/microvms" d)) dirs) "")
    ];
    dev-mode-two-vms-no-port-clash = [
      (check "no two units listen on one AF_VSOCK port" (let p = vsockListenPorts dev; in lib.length p == lib.length (lib.unique p)) (builtins.toJSON (vsockListenPorts dev)))
      (check "no dev token-endpoint units" (!(lib.any (n: lib.hasInfix "token-endpoint" n) (lib.attrNames dev.services))) "")
    ];
    tailscale-forwarding-is-limited = let
      rules = lib.filter (r: lib.hasInfix "tailscale0" r) (lib.splitString "\n" three.nftables.ruleset);
    in [
      (check "tailscale forwarding names destinations" (rules != [] && lib.all (r: lib.hasInfix " daddr " r) rules) (lib.concatStringsSep "\n" rules))
      (check "only the tailnet's ranges" (lib.all (r: lib.hasInfix "100.64.0.0/10" r || lib.hasInfix "fd7a:115c:a1e0::/48" r) rules) "")
    ];

    # Issue 15: N container instances give N users, subuid ranges, units, listeners and hub
    # endpoints, each bound to its own instance.
    container-instances-are-separate = let
      c = hosts.containers;
      names = ["alice" "bob" "carol"];
      ls = byName c;
      users = lib.filterAttrs (n: _: lib.hasPrefix "openclaw-" n) c.users;
      ranges = map (u: builtins.head u.subUidRanges) (lib.attrValues users);
      hubArgv = words ((svc c "credproxy-hub").serviceConfig.ExecStart or "");
      hubInstances = lib.concatLists (lib.imap0 (k: w:
        lib.optional (w == "--instance") (builtins.elemAt hubArgv (k + 1)))
      hubArgv);
      inst = c.containers.instances;
      envOf = n: lib.filter (lib.hasPrefix "CREDPROXY_SOCKET=") inst.${n}.podmanArgs;
    in [
      (check "three users, three uids, three subuid ranges of 65536" (lib.length (lib.attrNames users) == 3 && lib.length (lib.unique (map (u: u.uid) (lib.attrValues users))) == 3 && lib.all (r: r.count == 65536) ranges && lib.length (lib.unique (map (r: r.startUid) ranges)) == 3) (builtins.toJSON users))
      (check "each instance's group has the instance's uid as gid (keep-id, the tmpfs owner)" (lib.all (n: c.groupIds."openclaw-${n}" == c.users."openclaw-${n}".uid) names) (builtins.toJSON c.groupIds))
      (check "three container units, rootless (User= the instance user)" (lib.all (n: (svc c "openclaw-container-${n}").serviceConfig.User or null == "openclaw-${n}") names) "")
      (check "one unix listener per instance, bound to its agent, admitting its uid and subuid range only" (lib.all (n: let
        l = ls."container-${n}";
        u = c.users."openclaw-${n}";
        r = builtins.head u.subUidRanges;
      in
        l.unix == "/run/openclaw-containers/${n}/proxy/proxy.sock" && l.agent == n && l.peer_uids == [u.uid "${toString r.startUid}-${toString (r.startUid + r.count - 1)}"] && l ? agent_token.client_credentials)
      names) (builtins.toJSON ls))
      (check "each container mounts its own proxy directory only" (lib.all (n: lib.elem "/run/openclaw-containers/${n}/proxy:/run/credproxy:ro" inst.${n}.podmanArgs && lib.all (o: o == n || !(lib.any (lib.hasInfix "/run/openclaw-containers/${o}/") inst.${n}.podmanArgs)) names) names) "")
      (check "the proxy socket directory is credproxy's, group the instance's (setgid)" (lib.all (n: lib.elem "d /run/openclaw-containers/${n}/proxy 2750 credproxy openclaw-${n} - -" c.tmpfiles) names) "")
      (check "credproxy may write the listener directories" (lib.all (n: lib.elem "-/run/openclaw-containers/${n}/proxy" (svc c "credproxy").serviceConfig.ReadWritePaths) names) "")
      (check "the hub knows the three instances, by agent id" (hubInstances == names) (builtins.toJSON hubArgv))
      (check "the hub is an allowlisted internal service of credproxy" (c.credproxy.settings.internal_services."hub.openclaw.internal".unix == "/run/credproxy-hub/hub.sock" && lib.elem "hub.openclaw.internal" c.credproxy.settings.allowed_domains) (builtins.toJSON (c.credproxy.settings.internal_services or null)))
      (check "the hub trusts credproxy only and has no network" (lib.elem "--trusted-user" hubArgv && (svc c "credproxy-hub").serviceConfig.PrivateNetwork && (svc c "credproxy-hub").serviceConfig.RestrictAddressFamilies == ["AF_UNIX"] && lib.elem "credproxy-hub" c.users.credproxy.extraGroups) "")
      (check "no secret in the podman command lines (placeholders only)" (lib.all (n: !(lib.any (a: lib.hasInfix "secret" (lib.toLower a) || lib.hasInfix "/run/credentials" a) inst.${n}.podmanArgs)) names) "")
      (check "the proxy socket is the container's CREDPROXY_SOCKET" (lib.all (n: envOf n == ["CREDPROXY_SOCKET=/run/credproxy/proxy.sock"]) names) "")
      (check "the image holds OpenClaw, Node, curl, git, the CA bundle and credproxy (for its bridge)" (lib.all (p: lib.elem p c.containers.image.contents) ["openclaw" "nodejs_24" "curl" "git" "cacert" "credproxy" "openclaw-container-entrypoint"]) (builtins.toJSON c.containers.image.contents))
      (check "the image's environment holds no placeholder and no secret" (!(lib.any (e: lib.hasInfix "agent-vault-" e || lib.hasInfix "secret" (lib.toLower e)) c.containers.image.args.config.Env)) (builtins.toJSON c.containers.image.args.config.Env))
      (check "a build-time CA certificate goes into the image's bundle (never the key)" (lib.elem "openclaw-ca-bundle" hosts.containers-dev.containers.image.contents && !(lib.any (lib.hasInfix "ca.key") hosts.containers-dev.containers.image.contents)) (builtins.toJSON hosts.containers-dev.containers.image.contents))
      (check "host ports reach the container's gateway and webchat sockets" (lib.hasSuffix "tcp:127.0.0.1:18802 unix:/run/openclaw-containers/bob/sockets/gateway.sock" ((svc c "openclaw-container-bob-gateway").serviceConfig.ExecStart or "") && lib.hasSuffix "tcp:127.0.0.1:18803 unix:/run/openclaw-containers/bob/sockets/webchat.sock" ((svc c "openclaw-container-bob-webchat").serviceConfig.ExecStart or "")) "")
      (check "each instance's credentials are granted to its own agent only" (c.credproxy.settings.credentials != [] && lib.all (x: lib.length (x.allowed_agents or []) == 1 && lib.elem (lib.head x.allowed_agents) names) c.credproxy.settings.credentials && lib.all (n: lib.any (x: x.allowed_agents == [n]) c.credproxy.settings.credentials) names) (builtins.toJSON (map (x: {
          inherit (x) id;
          allowed_agents = x.allowed_agents or null;
        })
        c.credproxy.settings.credentials)))
      (check "a microVM shares the hub (extraInstances) and may reach it" (lib.elem "agent1" (words ((svc hosts.containers-and-vms "credproxy-hub").serviceConfig.ExecStart or ""))) "")
    ];

    # Defect 8: what the original's guest had.
    guest-has-state-volume-config-tools-console = let
      g = baseH.guests.agent1;
      gw = svc g "openclaw-gateway";
      dg = dev.guests.dev1;
    in [
      (check "a 16 GiB state volume at /var/lib/openclaw" (g.runner.volumes
        == [
          {
            image = "openclaw-state.img";
            mountPoint = "/var/lib/openclaw";
            size = 16384;
            label = "openclaw-state";
            fsType = "ext4";
            autoCreate = true;
          }
        ]) (builtins.toJSON g.runner.volumes))
      (check "openclaw.json: local gateway, token auth, chat completions" (g.openclaw.settings.gateway.mode == "local" && g.openclaw.settings.gateway.auth.mode == "token" && g.openclaw.settings.gateway.http.endpoints.chatCompletions.enabled) (builtins.toJSON g.openclaw.settings))
      (check "the token comes from a credential, not the store" (!(g.openclaw.settings.gateway.auth ? token) && lib.elem "gateway-token:openclaw-gateway-token" (gw.serviceConfig.LoadCredential or [])) (builtins.toJSON (gw.serviceConfig.LoadCredential or null)))
      (check "curl, jq and git for the agent" (lib.all (p: lib.elem p g.systemPackages) ["curl" "jq" "git"]) (builtins.toJSON g.systemPackages))
      (check "dev mode: console on a socket, autologin" (lib.any (lib.hasInfix "console.sock") dg.runner.qemuExtraArgs && dg.autologinUser == "openclaw") (builtins.toJSON dg.runner.qemuExtraArgs))
    ];
  };
}
