# services.openclaw-containers: OpenClaw agents in rootless Podman containers whose only way
# out is credproxy, and the inter-instance hub (`credproxy hub`).
#
# Per instance (D5 in the project's decisions):
#   - a system user of its own (fixed uid) with a subuid/subgid range of its own; Podman runs
#     rootless as that user, with --userns=keep-id (the agent runs as that uid);
#   - the container has no network but loopback (--network none), a read-only root, no
#     capabilities, no-new-privileges, a seccomp profile without namespace creation, mknod or
#     the setuid family (./openclaw-containers/seccomp.nix), and memory/CPU/PID limits;
#   - its only way out is its own credproxy `unix` listener, bind-mounted into the container;
#     the listener admits the instance's uid and subuid range only (`peer_uids`, SO_PEERCRED)
#     and carries the instance's agent identity (`agent_token`: the proxy obtains the token,
#     the container holds none); inside, `credproxy bridge` serves it on 127.0.0.1 as the
#     agent's HTTPS_PROXY;
#   - its credentials and allowed domains are usable from its listener by its agent only
#     (generated policy rules); the API keys themselves never enter the image or the
#     container, which sees placeholders;
#   - the gateway (and webchat) are reached from the host's loopback through a socket the
#     container's bridge serves, bridged to TCP on the host.
# The hub (`credproxy hub`) is an internal service of credproxy (`internal_services`), so
# instances reach it through their own listener as `hub.openclaw.internal` and it knows who
# is calling from the identity credproxy verified.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.openclaw-containers;
  cp = config.services.credproxy;
  cplib = import ../nix/lib.nix {inherit lib;};
  inherit (lib) mkOption types literalExpression;

  jsonFormat = pkgs.formats.json {};
  devIssuerKey = "/var/lib/credproxy/dev-issuer/dev-issuer-key.pem";
  subidCount = 65536;

  # Paths inside the container.
  home = "/home/openclaw";
  inContainer = {
    proxyDir = "/run/credproxy";
    proxySocket = "/run/credproxy/proxy.sock";
    socketDir = "/run/openclaw/sockets";
    configDir = "/etc/openclaw";
    caBundle = "/etc/ssl/certs/ca-bundle.crt";
    state = "${home}/.openclaw";
    workspace = "${home}/workspace";
    sharedContext = "/shared-context";
  };

  instanceOptions = {
    name,
    config,
    ...
  }: {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Whether to run this instance.";
        example = false;
      };
      user = mkOption {
        type = types.str;
        default = "openclaw-${name}";
        defaultText = literalExpression ''"openclaw-<name>"'';
        description = "System user the instance's rootless Podman runs as (created by this module).";
        example = "openclaw-alice";
      };
      group = mkOption {
        type = types.str;
        default = config.user;
        defaultText = literalExpression "user";
        description = "Group of the instance's user (created by this module).";
        example = "openclaw-alice";
      };
      uid = mkOption {
        type = types.ints.between 1000 65535;
        default = cfg.uidBase + 1 + indexOf name;
        defaultText = literalExpression "uidBase + 1 + <position of the name>";
        description = ''
          The instance user's uid (and its group's gid). Fixed, because credproxy's listener
          for this instance admits exactly this uid and the instance's subuid range
          (`peer_uids`).
        '';
        example = 30001;
      };
      subUidStart = mkOption {
        type = types.ints.positive;
        default = cfg.subuidBase + subidCount * indexOf name;
        defaultText = literalExpression "subuidBase + 65536 * <position of the name>";
        description = ''
          First uid (and gid) of the instance's 65536 subordinate ids. Ranges must not overlap
          each other or any instance uid.
        '';
        example = 300000;
      };
      agentId = mkOption {
        type = types.str;
        default = name;
        defaultText = literalExpression "<name>";
        description = ''
          The instance's agent identity: the token's agent claim (`identity.oidc.agent_claim`)
          its listener is bound to, and its name in the hub.
        '';
        example = "alice";
      };
      identity = cplib.identityOptions {
        inherit (config) agentId;
        unit = "instance";
        place = "container";
        exampleId = "alice";
      };
      allowedDomains = mkOption {
        type = types.listOf types.str;
        default = [];
        description = ''
          Hosts this instance may reach ("*.example.com" matches one extra label). Added to
          credproxy's allowlist and enforced per instance by the generated policy rules (the
          hub's name is added when the hub is enabled).
        '';
        example = ["api.anthropic.com"];
      };
      credentials = cplib.credentialsOption {
        inherit pkgs;
        unit = "instance";
        place = "container";
      };
      placeholderEnvironment = mkOption {
        type = types.attrsOf types.str;
        readOnly = true;
        default = lib.mapAttrs' (_: c: lib.nameValuePair c.envVar c.placeholder) (lib.filterAttrs (_: c: c.envVar != null) config.credentials);
        defaultText = literalExpression "{ <envVar> = <placeholder>; } of the credentials";
        description = "The placeholder variables the container gets (not secrets).";
        example = {ANTHROPIC_API_KEY = "agent-vault-00000000-0000-0000-0000-000000000001";};
      };
      workspace = {
        path = mkOption {
          type = types.str;
          default = "${cfg.stateDir}/${name}/workspace";
          defaultText = literalExpression ''"''${stateDir}/<name>/workspace"'';
          description = "Host directory mounted read-write at ${inContainer.workspace}.";
          example = "/srv/openclaw/alice/workspace";
        };
        statePath = mkOption {
          type = types.str;
          default = "${cfg.stateDir}/${name}/state";
          defaultText = literalExpression ''"''${stateDir}/<name>/state"'';
          description = "The persistent state volume: OpenClaw's state directory, mounted read-write at ${inContainer.state}.";
          example = "/srv/openclaw/alice/state";
        };
        sharedContextPath = mkOption {
          type = types.nullOr types.str;
          default = null;
          description = "A host directory mounted read-only at ${inContainer.sharedContext} (null: none). The hub's shared context is read with GET /context.";
          example = "/srv/openclaw/shared-context";
        };
      };
      ports = {
        gateway = mkOption {
          type = types.nullOr types.port;
          default = null;
          description = "Host loopback port for the instance's gateway (null: no host access).";
          example = 18789;
        };
        webchat = mkOption {
          type = types.nullOr types.port;
          default = null;
          description = "Host loopback port for the instance's webchat (null: no host access).";
          example = 3000;
        };
      };
      containerPorts = {
        gateway = mkOption {
          type = types.port;
          default = 18789;
          description = "The gateway's port inside the container.";
          example = 18789;
        };
        webchat = mkOption {
          type = types.port;
          default = 3000;
          description = "The webchat's port inside the container.";
          example = 3000;
        };
      };
      resources = {
        memoryLimit = mkOption {
          type = types.str;
          default = "4g";
          description = "Podman --memory.";
          example = "8g";
        };
        cpuLimit = mkOption {
          type = types.str;
          default = "2.0";
          description = "Podman --cpus.";
          example = "4";
        };
        pidsLimit = mkOption {
          type = types.ints.positive;
          default = 1024;
          description = "Podman --pids-limit.";
          example = 4096;
        };
      };
      openclaw = {
        agentName = mkOption {
          type = types.str;
          default = name;
          defaultText = literalExpression "<name>";
          description = "OPENCLAW_AGENT_NAME in the container.";
          example = "alice";
        };
        sandboxMode = mkOption {
          type = types.enum ["all" "none" "tools-only"];
          default = "all";
          description = "OPENCLAW_SANDBOX_MODE in the container.";
          example = "tools-only";
        };
        settings = mkOption {
          default = {};
          description = ''
            The instance's `openclaw.json` (any OpenClaw key). No secret goes here: the
            gateway's token comes from {option}`gateway.tokenFile` at start, API keys stay
            with credproxy (`credentials`), and keys that look like secrets are refused.
          '';
          example = {gateway.http.endpoints.chatCompletions.enabled = true;};
          type = types.submodule {
            freeformType = jsonFormat.type;
            options.gateway = {
              mode = mkOption {
                type = types.enum ["local" "remote"];
                default = "local";
                description = "Gateway mode: `local` runs the agent in this container.";
                example = "local";
              };
              bind = mkOption {
                type = types.str;
                default = "loopback";
                description = "Where the gateway listens inside the container (the host reaches it through a socket).";
                example = "loopback";
              };
              port = mkOption {
                type = types.port;
                default = config.containerPorts.gateway;
                defaultText = literalExpression "containerPorts.gateway";
                description = "Gateway port.";
                example = 18789;
              };
              auth.mode = mkOption {
                type = types.enum ["token"];
                default = "token";
                description = "Token authentication (the token from gateway.tokenFile).";
                example = "token";
              };
            };
          };
        };
      };
      gateway.tokenFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = ''
          Host file with the gateway's auth token (a string path, never the store). Put into
          the instance's openclaw.json (mode 0440, root:<group>) at every start. Null: a random
          token is generated once into ''${stateDir}/<name>/gateway-token. It opens this
          instance's gateway only, from the host's loopback.
        '';
        example = "/run/secrets/openclaw-alice-gateway-token";
      };
      environment = mkOption {
        type = types.attrsOf types.str;
        default = {};
        description = "Extra environment of the container (never a secret: it is in the unit file).";
        example = {OPENCLAW_LOG_LEVEL = "debug";};
      };
      command = mkOption {
        type = types.listOf types.str;
        default = [];
        description = "The container's command (empty: the image's, `openclaw gateway run`).";
        example = ["openclaw" "gateway" "run" "--verbose"];
      };
      podmanArgs = mkOption {
        type = types.listOf types.str;
        readOnly = true;
        default = runArgs (config // {inherit name;});
        defaultText = literalExpression "the generated arguments";
        description = "The generated `podman run` arguments (after the global flags).";
        example = ["run" "--rm" "--network" "none"];
      };
    };
  };

  instances = lib.filterAttrs (_: i: i.enable) cfg.instances;
  instanceNames = lib.attrNames cfg.instances;
  instanceList = lib.mapAttrsToList (name: i: i // {inherit name;}) instances;
  indexOf = name: lib.lists.findFirstIndex (n: n == name) 0 instanceNames;

  listenerName = name: "container-${name}";
  unitName = name: "openclaw-container-${name}";
  containerName = name: "openclaw-${name}";
  runDir = name: "${cfg.runtimeDir}/${name}";
  proxyDir = name: "${runDir name}/proxy";
  socketDir = name: "${runDir name}/sockets";
  configDir = name: "${runDir name}/config";
  homeDir = name: "${cfg.stateDir}/${name}/home";
  generatedTokenFile = name: "${cfg.stateDir}/${name}/gateway-token";
  clientSecretCredential = name: "container-${name}-client-secret";
  devIdentity = _i: cfg.dangerousDevMode.enable;

  hub = cfg.hub;
  hubSocket = hub.socket;
  hubInstances = map (i: i.agentId) instanceList ++ hub.extraInstances;

  # Paths that, together with the state and workspace, are the instance's host side.
  hostSockets = i:
    lib.filter (s: s.hostPort != null) [
      {
        name = "gateway";
        hostPort = i.ports.gateway;
        port = i.containerPorts.gateway;
      }
      {
        name = "webchat";
        hostPort = i.ports.webchat;
        port = i.containerPorts.webchat;
      }
    ];

  agentToken = i:
    cplib.agentToken {
      dev = devIdentity i;
      inherit devIssuerKey;
      clientSecretFile = "${cp.credentialsDirectory}/${clientSecretCredential i.name}";
    }
    i.identity;

  listener = i: {
    name = listenerName i.name;
    unix = "${proxyDir i.name}/proxy.sock";
    unix_mode = "0660";
    # The agent runs as the instance's uid (keep-id); anything else in the container would
    # run from its subuid range. Nobody else may connect.
    peer_uids = [i.uid "${toString i.subUidStart}-${toString (i.subUidStart + subidCount - 1)}"];
    agent = i.agentId;
    agent_token = agentToken i;
  };

  # The image: OpenClaw and Node, a shell and the tools the entrypoint needs, curl and git
  # for the agent, the CA bundle (with the proxy's CA certificate when given at build time;
  # never its key), credproxy for `credproxy bridge`. No secret, no placeholder.
  entrypoint = pkgs.writeTextFile {
    name = "openclaw-container-entrypoint";
    executable = true;
    destination = "/bin/openclaw-container-entrypoint";
    text = builtins.readFile ./openclaw-containers/entrypoint.sh;
  };
  caBundle =
    if cfg.caCertificate == null
    then pkgs.cacert
    else
      pkgs.runCommand "openclaw-ca-bundle" {} ''
        mkdir -p $out/etc/ssl/certs
        cat ${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt ${cfg.caCertificate} > $out/etc/ssl/certs/ca-bundle.crt
      '';
  imageContents =
    [entrypoint cp.package pkgs.bashInteractive pkgs.coreutils pkgs.gnugrep pkgs.curl pkgs.git caBundle]
    ++ lib.optional (cfg.openclawPackage != null) cfg.openclawPackage
    ++ lib.optional (cfg.nodePackage != null) cfg.nodePackage
    ++ cfg.extraImageContents;
  image = pkgs.dockerTools.streamLayeredImage {
    name = "localhost/openclaw-agent";
    contents = imageContents;
    maxLayers = 100;
    fakeRootCommands = ''
      mkdir -p ./tmp .${home} .${inContainer.proxyDir} .${inContainer.socketDir} .${inContainer.configDir} .${inContainer.sharedContext}
      chmod 1777 ./tmp
    '';
    config = {
      Entrypoint = ["/bin/openclaw-container-entrypoint"];
      Cmd = ["openclaw" "gateway" "run"];
      WorkingDir = inContainer.workspace;
      Env = [
        "PATH=/bin"
        "CREDPROXY_BRIDGE=credproxy bridge"
        "SSL_CERT_FILE=${inContainer.caBundle}"
        "NODE_ENV=production"
      ];
      Labels = {
        "org.opencontainers.image.title" = "openclaw-agent";
        "org.opencontainers.image.description" = "OpenClaw agent for services.openclaw-containers (egress only through credproxy)";
      };
    };
  };
  imageRef = "${image.imageName}:${image.imageTag}";

  podman = lib.getExe' config.virtualisation.podman.package "podman";
  # Rootless Podman run by a system service (no user session): cgroupfs, events in a file.
  podmanGlobal = ["--cgroup-manager=cgroupfs" "--events-backend=file"];

  settingsFile = i: jsonFormat.generate "openclaw-${i.name}.json" i.openclaw.settings;

  containerEnv = i:
    {
      HOME = home;
      HTTPS_PROXY = "http://127.0.0.1:${toString cfg.proxyPort}";
      HTTP_PROXY = "http://127.0.0.1:${toString cfg.proxyPort}";
      https_proxy = "http://127.0.0.1:${toString cfg.proxyPort}";
      http_proxy = "http://127.0.0.1:${toString cfg.proxyPort}";
      NO_PROXY = "localhost,127.0.0.1,::1";
      no_proxy = "localhost,127.0.0.1,::1";
      NODE_USE_ENV_PROXY = "1";
      SSL_CERT_FILE = inContainer.caBundle;
      NODE_EXTRA_CA_CERTS = inContainer.caBundle;
      CURL_CA_BUNDLE = inContainer.caBundle;
      GIT_SSL_CAINFO = inContainer.caBundle;
      REQUESTS_CA_BUNDLE = inContainer.caBundle;
      CREDPROXY_SOCKET = inContainer.proxySocket;
      CREDPROXY_PROXY_PORT = toString cfg.proxyPort;
      OPENCLAW_SOCKET_DIR = inContainer.socketDir;
      OPENCLAW_HOST_SOCKETS = lib.concatMapStringsSep " " (s: "${s.name}:${toString s.port}") (hostSockets i);
      OPENCLAW_AGENT_NAME = i.openclaw.agentName;
      OPENCLAW_SANDBOX_MODE = i.openclaw.sandboxMode;
      OPENCLAW_STATE_DIR = inContainer.state;
      OPENCLAW_CONFIG_PATH = "${inContainer.configDir}/openclaw.json";
    }
    // i.placeholderEnvironment
    // i.environment;

  volume = src: dst: opts: ["--volume" "${src}:${dst}:${opts}"];

  runArgs = i:
    [
      "run"
      "--rm"
      "--replace"
      "--name"
      (containerName i.name)
      "--init"
      "--network"
      "none"
      "--read-only"
      "--read-only-tmpfs=true"
      "--cap-drop"
      "ALL"
      "--security-opt"
      "no-new-privileges"
      "--security-opt"
      "seccomp=${seccompProfile}"
      "--userns"
      "keep-id"
      "--memory"
      i.resources.memoryLimit
      "--cpus"
      i.resources.cpuLimit
      "--pids-limit"
      (toString i.resources.pidsLimit)
      "--hostname"
      i.name
      # A writable home for the agent (the root is read-only), owned by the agent (U).
      "--tmpfs"
      "${home}:rw,nosuid,nodev,size=512m,mode=0700,U"
    ]
    ++ volume (proxyDir i.name) inContainer.proxyDir "ro"
    ++ volume (socketDir i.name) inContainer.socketDir "rw"
    ++ volume (configDir i.name) inContainer.configDir "ro"
    ++ volume i.workspace.statePath inContainer.state "rw"
    ++ volume i.workspace.path inContainer.workspace "rw"
    ++ lib.optionals (i.workspace.sharedContextPath != null) (volume i.workspace.sharedContextPath inContainer.sharedContext "ro")
    ++ lib.optionals (cfg.caCertificate == null) (volume "${configDir i.name}/ca-bundle.crt" inContainer.caBundle "ro")
    ++ lib.concatLists (lib.mapAttrsToList (k: v: ["--env" "${k}=${v}"]) (containerEnv i))
    ++ ["--workdir" inContainer.workspace imageRef]
    ++ i.command;

  seccompProfile = pkgs.writeText "openclaw-containers-seccomp.json" (builtins.toJSON (import ./openclaw-containers/seccomp.nix));

  # The generated policy rules: each instance's credentials and domains are its own.
  lower = lib.toLower;
  policyUnits =
    map (i: {
      inherit (i) name;
      listener = listenerName i.name;
      agent = i.agentId;
      credentials = lib.attrNames i.credentials;
      domains = map lower (i.allowedDomains ++ lib.optional hub.enable hub.name);
      kind = "unix";
      peer = "unix uid=${toString i.uid}";
    })
    instanceList;
  credentialOwner = lib.listToAttrs (lib.concatMap (i: map (id: lib.nameValuePair id (listenerName i.name)) (lib.attrNames i.credentials)) instanceList);
  policyRules = cplib.ownershipPolicy {
    module = "services.openclaw-containers (modules/openclaw-containers.nix)";
    prefix = "openclaw_container";
    what = "container";
    units = policyUnits;
  };
  policyTests = cplib.ownershipPolicyTests {
    prefix = "openclaw_container";
    what = "container";
    units = policyUnits;
    reachable = lib.optional hub.enable (lower hub.name);
  };

  unique = xs: lib.length xs == lib.length (lib.unique xs);
  adminPort = let
    a = cp.settings.admin.tcp or null;
  in
    if a == null
    then null
    else lib.toInt (lib.last (lib.splitString ":" a));
  # Port 0 (the OS chooses when the bridge binds) never clashes.
  hostPorts = lib.filter (p: p != 0) (lib.concatMap (i: map (s: s.hostPort) (hostSockets i)) instanceList);
  vmGatewayPorts =
    lib.optionals (config.services.openclaw-vm.enable or false)
    (lib.filter (p: p != null) (lib.mapAttrsToList (_: vm: vm.gateway.hostPort or null) config.services.openclaw-vm.vms));
  tcpListenerPorts = map (l: lib.toInt (lib.last (lib.splitString ":" l.tcp))) (lib.filter (l: l.tcp != null) cp.settings.listeners);
  subRange = i: {
    first = i.subUidStart;
    last = i.subUidStart + subidCount - 1;
  };
  overlaps = a: b: a.first <= b.last && b.first <= a.last;
  rangePairs = lib.concatLists (lib.imap0 (n: a: map (b: [a b]) (lib.drop (n + 1) instanceList)) instanceList);
  overlapping = lib.filter (p: overlaps (subRange (lib.elemAt p 0)) (subRange (lib.elemAt p 1))) rangePairs;
  uidInRanges = lib.filter (i: lib.any (o: i.uid >= (subRange o).first && i.uid <= (subRange o).last) instanceList) instanceList;
  # Keys of openclaw.json that would hold a secret.
  secretKeys = path: v:
    if builtins.isAttrs v
    then lib.concatLists (lib.mapAttrsToList (k: x: secretKeys (path ++ [k]) x) v)
    else lib.optional (builtins.match "(.*[Tt]oken|.*[Ss]ecret|.*[Pp]assword|.*[Aa]pi[_-]?[Kk]ey|.*[Pp]rivate[_-]?[Kk]ey)" (lib.last path) != null && v != null && v != "") (lib.concatStringsSep "." path);
in {
  options.services.openclaw-containers = {
    enable = lib.mkEnableOption "OpenClaw agents in rootless Podman containers whose only egress is credproxy";

    instances = mkOption {
      type = types.attrsOf (types.submodule instanceOptions);
      default = {};
      description = "Agent instances, by name.";
      example = literalExpression ''
        {
          alice = {
            identity = {
              issuer = "https://id.example/realms/openclaw";
              clientSecretFile = "/run/secrets/openclaw-alice-client-secret";
            };
            allowedDomains = [ "api.anthropic.com" ];
            credentials.anthropic-alice = {
              placeholder = "agent-vault-00000000-0000-0000-0000-000000000001";
              envVar = "ANTHROPIC_API_KEY";
              settings = {
                header_name = "x-api-key";
                bound_domains = [ "api.anthropic.com" ];
                allowed_roles = [ "proxy-user" ];
                source.openbao.path = "openclaw/credentials/alice/anthropic";
              };
            };
            ports.gateway = 18789;
          };
        }
      '';
    };

    openclawPackage = mkOption {
      type = types.nullOr types.package;
      default = pkgs.openclaw or null;
      defaultText = literalExpression "pkgs.openclaw or null";
      description = "The OpenClaw package built into the image (e.g. from the nix-openclaw flake); its bin/openclaw is on the image's PATH.";
      example = literalExpression "inputs.nix-openclaw.packages.x86_64-linux.openclaw";
    };

    nodePackage = mkOption {
      type = types.nullOr types.package;
      default = pkgs.nodejs_24 or null;
      defaultText = literalExpression "pkgs.nodejs_24";
      description = "Node.js in the image (OpenClaw needs 24.16 or later).";
      example = literalExpression "pkgs.nodejs_24";
    };

    extraImageContents = mkOption {
      type = types.listOf types.package;
      default = [];
      description = "More packages in the image (their bin/ on its PATH).";
      example = literalExpression "[ pkgs.jq pkgs.ripgrep ]";
    };

    caCertificate = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = ''
        The proxy's CA certificate at build time (public), built into the image's CA bundle.
        Null: the bundle is assembled at every start from the system roots and
        {option}`services.credproxy.ca.publicCertificate`, and mounted read-only.
      '';
      example = literalExpression "./credproxy-ca.crt";
    };

    image = mkOption {
      type = types.package;
      readOnly = true;
      default = image;
      defaultText = literalExpression "pkgs.dockerTools.streamLayeredImage { ... }";
      description = "The image (a script that streams it; loaded with `podman load` when it changes).";
      example = literalExpression "config.services.openclaw-containers.image";
    };

    imageRef = mkOption {
      type = types.str;
      readOnly = true;
      default = imageRef;
      description = "The image's name and tag (the tag is the image's content hash).";
      example = "localhost/openclaw-agent:abc123";
    };

    seccompProfile = mkOption {
      type = types.path;
      readOnly = true;
      default = seccompProfile;
      description = "The seccomp profile of the containers (./openclaw-containers/seccomp.nix).";
      example = "/nix/store/...-openclaw-containers-seccomp.json";
    };

    uidBase = mkOption {
      type = types.ints.between 1000 65535;
      default = 30000;
      description = "Instance uids default to uidBase + 1 + the instance's position (by name).";
      example = 40000;
    };

    subuidBase = mkOption {
      type = types.ints.positive;
      default = 300000;
      description = "Instances' subuid/subgid ranges (65536 each) default to subuidBase + position * 65536.";
      example = 500000;
    };

    proxyPort = mkOption {
      type = types.port;
      default = 18790;
      description = "Port of the agent's proxy inside every container (127.0.0.1; the container's own loopback).";
      example = 18790;
    };

    runtimeDir = mkOption {
      type = types.str;
      default = "/run/openclaw-containers";
      description = "Per-instance runtime directories: the proxy socket, host-access sockets, the generated openclaw.json.";
      example = "/run/openclaw-containers";
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/openclaw-containers";
      description = "Per-instance persistent directories: home (Podman's image store), state volume, workspace, generated gateway token.";
      example = "/srv/openclaw";
    };

    hub = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = ''
          The inter-instance hub (`credproxy hub`): delegations between instances and a shared
          context, reached through credproxy as {option}`hub.name`, authenticated by each
          instance's verified identity. Needs no secret.
        '';
        example = false;
      };
      socket = mkOption {
        type = types.str;
        default = "/run/credproxy-hub/hub.sock";
        description = "The hub's socket (mode 0660, group credproxy-hub; credproxy is a member).";
        example = "/run/credproxy-hub/hub.sock";
      };
      stateDir = mkOption {
        type = types.str;
        default = "/var/lib/credproxy-hub";
        description = "Where the hub keeps delegations and the shared context.";
        example = "/var/lib/credproxy-hub";
      };
      auditLog = mkOption {
        type = types.str;
        default = "/var/log/credproxy-hub/audit.jsonl";
        description = "The hub's append-only audit log (JSON lines): every call, accepted or refused.";
        example = "/var/log/credproxy-hub/audit.jsonl";
      };
      name = mkOption {
        type = types.str;
        default = "hub.openclaw.internal";
        description = "The internal name instances reach the hub by (allowlisted; routed to the hub's socket).";
        example = "hub.agents.internal";
      };
      extraInstances = mkOption {
        type = types.listOf types.str;
        default = [];
        description = ''
          More agent ids the hub knows, e.g. microVMs' (services.openclaw-vm.vms.<name>.agentId;
          add the hub's name to the VM's allowedDomains so its listener may reach it).
        '';
        example = ["agent1"];
      };
      rateLimit = mkOption {
        type = types.ints.positive;
        default = 60;
        description = "Calls per instance per minute (sliding window).";
        example = 120;
      };
      maxDelegationDepth = mkOption {
        type = types.ints.positive;
        default = 5;
        description = "Longest delegation chain that may be passed on.";
        example = 3;
      };
      maxPending = mkOption {
        type = types.ints.positive;
        default = 1000;
        description = "Most unacknowledged delegations per instance.";
        example = 100;
      };
      maxContextKeys = mkOption {
        type = types.ints.positive;
        default = 1024;
        description = "Most shared context keys.";
        example = 256;
      };
    };

    dangerousDevMode.enable = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Development only: every instance's agent gets its tokens from credproxy's dev issuer
        (`identity.devRoles`), and credproxy trusts only that issuer.
      '';
      example = true;
    };
  };

  config = lib.mkIf cfg.enable (lib.mkMerge [
    {
      assertions =
        [
          {
            assertion = instanceList != [];
            message = "services.openclaw-containers is enabled with no instance: declare services.openclaw-containers.instances.<name>.";
          }
          {
            assertion = unique (map (i: i.uid) instanceList);
            message = "services.openclaw-containers.instances: every instance needs its own uid (its listener admits that uid only).";
          }
          {
            assertion = unique (map (i: i.agentId) instanceList);
            message = "services.openclaw-containers.instances: every instance needs its own agentId (its listener, credentials, domains and hub identity are bound to it).";
          }
          {
            assertion = unique (map (i: i.user) instanceList);
            message = "services.openclaw-containers.instances: every instance needs its own user.";
          }
          {
            assertion = overlapping == [];
            message = "services.openclaw-containers.instances: subuid ranges overlap (${lib.concatMapStringsSep "; " (p: "${(lib.elemAt p 0).name} and ${(lib.elemAt p 1).name}") overlapping}); each instance needs ${toString subidCount} subordinate ids of its own (subUidStart).";
          }
          {
            assertion = uidInRanges == [];
            message = "services.openclaw-containers.instances: the uid of ${lib.concatMapStringsSep ", " (i: i.name) uidInRanges} falls inside a subuid range; uids and subuid ranges must be apart.";
          }
          {
            assertion = unique (hostPorts ++ vmGatewayPorts) && !(lib.elem adminPort hostPorts) && lib.all (p: !(lib.elem p tcpListenerPorts)) hostPorts;
            message = "services.openclaw-containers.instances: the host ports (ports.gateway, ports.webchat) must differ from each other, from microVM gateway ports, from credproxy's admin port (${toString adminPort}) and TCP listeners; in use: ${lib.concatMapStringsSep ", " toString (hostPorts ++ vmGatewayPorts)}.";
          }
          {
            assertion = unique (lib.attrNames credentialOwner) && lib.length (lib.attrNames credentialOwner) == lib.length (lib.concatMap (i: lib.attrNames i.credentials) instanceList);
            message = "services.openclaw-containers.instances: a credential id is used by two instances; credentials are per instance, give each its own id.";
          }
          {
            assertion = cfg.openclawPackage != null;
            message = "services.openclaw-containers.openclawPackage is not set and pkgs.openclaw does not exist; pass the package from the nix-openclaw flake.";
          }
          {
            assertion = cp.settings.policy.dir == cp.policyDirectory;
            message = ''
              services.openclaw-containers: services.credproxy.settings.policy.dir is set to ${toString cp.settings.policy.dir}, so the
              generated per-instance rules (credentials and domains of each instance are its own) would not be served.
              Put your Rego files into services.credproxy.policyFiles instead.
            '';
          }
          {
            assertion = cfg.caCertificate == null || toString cfg.caCertificate != toString cp.settings.ca.key_file;
            message = "services.openclaw-containers.caCertificate is credproxy's CA key; give the certificate (the key never leaves credproxy).";
          }
          {
            assertion = !hub.enable || lib.all (i: lib.all (d: lower d != lower hub.name) (lib.concatMap (c: c.settings.bound_domains or []) (lib.attrValues i.credentials))) instanceList;
            message = "services.openclaw-containers: a credential is bound to the hub's name ${hub.name}; the hub never receives a credential.";
          }
        ]
        ++ lib.concatMap (i: let
          at = "services.openclaw-containers.instances.${i.name}";
        in
          [
            {
              assertion = agentToken i != null;
              message = ''
                ${at}.identity: the instance's listener needs an identity: set identity.clientSecretFile with
                identity.tokenUrl or identity.issuer (the proxy obtains the agent's token; the secret stays on
                the host), or enable dangerousDevMode (dev issuer).
              '';
            }
            {
              assertion = devIdentity i || i.identity.clientSecretFile == null || ((i.identity.tokenUrl != null) != (i.identity.issuer != null));
              message = "${at}.identity: give exactly one of tokenUrl, issuer.";
            }
            {
              assertion = secretKeys [] i.openclaw.settings == [];
              message = ''
                ${at}.openclaw.settings: ${lib.concatStringsSep ", " (secretKeys [] i.openclaw.settings)} would put a secret into the Nix store.
                The gateway's token comes from gateway.tokenFile; API keys stay with credproxy (credentials.<id>).
              '';
            }
          ]
          ++ lib.mapAttrsToList (id: c: {
            assertion = (c.settings.allowed_roles or []) != [];
            message = "${at}.credentials.${id}.settings.allowed_roles is empty: the default policy refuses every use of a credential no role may use.";
          })
          i.credentials)
        instanceList
        ++ cplib.secretPathAssertions (lib.concatMap (i: [
            {
              what = "services.openclaw-containers.instances.${i.name}.identity.clientSecretFile";
              value = i.identity.clientSecretFile;
            }
            {
              what = "services.openclaw-containers.instances.${i.name}.gateway.tokenFile";
              value = i.gateway.tokenFile;
            }
          ])
          instanceList);

      virtualisation.podman.enable = true;

      services.credproxy = {
        enable = true;
        settings = {
          listeners = map listener instanceList;
          allowed_domains = lib.unique (lib.concatMap (i: i.allowedDomains) instanceList ++ lib.optional hub.enable hub.name);
          credentials = cplib.credproxyCredentials instanceList;
          internal_services = lib.mkIf hub.enable {${hub.name}.unix = hubSocket;};
        };
        policyFiles = lib.mkIf (instanceList != []) {
          "openclaw_containers.rego" = policyRules;
          "openclaw_containers_test.rego" = policyTests;
        };
        loadCredential =
          lib.listToAttrs (map (i: lib.nameValuePair (clientSecretCredential i.name) i.identity.clientSecretFile)
            (lib.filter (i: !(devIdentity i) && i.identity.clientSecretFile != null) instanceList));
      };

      users.users =
        lib.listToAttrs (map (i:
          lib.nameValuePair i.user {
            isSystemUser = true;
            inherit (i) uid group;
            description = "OpenClaw container instance ${i.name}";
            home = homeDir i.name;
            createHome = true;
            subUidRanges = [
              {
                startUid = i.subUidStart;
                count = subidCount;
              }
            ];
            subGidRanges = [
              {
                startGid = i.subUidStart;
                count = subidCount;
              }
            ];
          })
        instanceList)
        // lib.optionalAttrs hub.enable {
          credproxy-hub = {
            isSystemUser = true;
            group = "credproxy-hub";
            description = "credproxy hub (inter-instance delegations)";
          };
          # credproxy connects to the hub's socket (group credproxy-hub, 0660).
          credproxy.extraGroups = ["credproxy-hub"];
        };
      users.groups =
        lib.listToAttrs (map (i: lib.nameValuePair i.group {gid = i.uid;}) instanceList)
        // lib.optionalAttrs hub.enable {credproxy-hub = {};};

      systemd.tmpfiles.rules =
        [
          "d ${cfg.runtimeDir} 0755 root root - -"
          "d ${cfg.stateDir} 0755 root root - -"
        ]
        ++ lib.concatMap (i: [
          "d ${runDir i.name} 0750 root ${i.group} - -"
          # credproxy creates the listener here; the setgid bit gives the socket the
          # instance's group, so only the instance's user (and credproxy) can open it.
          "d ${proxyDir i.name} 2750 credproxy ${i.group} - -"
          "d ${socketDir i.name} 0750 ${i.user} ${i.group} - -"
          "d ${configDir i.name} 0750 root ${i.group} - -"
          "d ${cfg.stateDir}/${i.name} 0750 root ${i.group} - -"
          "d ${homeDir i.name} 0700 ${i.user} ${i.group} - -"
          "d ${i.workspace.statePath} 0700 ${i.user} ${i.group} - -"
          "d ${i.workspace.path} 0750 ${i.user} ${i.group} - -"
        ])
        instanceList;

      systemd.services = lib.mkMerge ([
          {
            credproxy = {
              # The listener directories exist before credproxy binds, and credproxy may write
              # in them (ProtectSystem=strict).
              serviceConfig.ExecStartPre = ["+${lib.getExe' pkgs.systemd "systemd-tmpfiles"} --create --prefix=${cfg.runtimeDir}"];
              serviceConfig.ReadWritePaths = map (i: "-${proxyDir i.name}") instanceList;
              after = ["systemd-tmpfiles-setup.service"] ++ lib.optional hub.enable "credproxy-hub.service";
              wants = lib.optional hub.enable "credproxy-hub.service";
            };
          }
        ]
        ++ map (i: let
          loadImage = pkgs.writeShellScript "openclaw-container-${i.name}-load-image" ''
            set -euo pipefail
            podman() { ${podman} ${lib.escapeShellArgs podmanGlobal} "$@"; }
            if ! podman image exists ${imageRef}; then
              ${image} | podman load
            fi
            # Older builds of the image are not needed any more.
            podman images --format '{{.Repository}}:{{.Tag}}' \
              | { grep '^${image.imageName}:' || true; } | { grep -v '^${imageRef}$' || true; } \
              | while read -r old; do podman rmi "$old" || true; done
          '';
          prepare = pkgs.writeShellScript "openclaw-container-${i.name}-prepare" ''
            set -euo pipefail
            umask 0077
            ${lib.getExe' pkgs.systemd "systemd-tmpfiles"} --create --prefix=${runDir i.name} --prefix=${cfg.stateDir}/${i.name}
            ${lib.optionalString (i.gateway.tokenFile == null) ''
              # A gateway token of its own, generated once, kept on the host.
              if [ ! -s ${generatedTokenFile i.name} ]; then
                head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > ${generatedTokenFile i.name}.new
                mv ${generatedTokenFile i.name}.new ${generatedTokenFile i.name}
              fi
            ''}
            token=${
              if i.gateway.tokenFile != null
              then "$CREDENTIALS_DIRECTORY/gateway-token"
              else generatedTokenFile i.name
            }
            d=${configDir i.name}
            ${lib.getExe pkgs.jq} --rawfile token "$token" '.gateway.auth.token = ($token | rtrimstr("\n"))' ${settingsFile i} > "$d/openclaw.json.new"
            ${lib.optionalString (cfg.caCertificate == null) ''
              # Only the certificate: the system roots and credproxy's public CA certificate.
              cat ${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt ${cp.ca.publicCertificate} > "$d/ca-bundle.crt.new"
              chmod 0444 "$d/ca-bundle.crt.new"
              mv -f "$d/ca-bundle.crt.new" "$d/ca-bundle.crt"
            ''}
            chown root:${i.group} "$d/openclaw.json.new"
            chmod 0440 "$d/openclaw.json.new"
            mv -f "$d/openclaw.json.new" "$d/openclaw.json"
          '';
        in
          lib.mkMerge [
            {
              ${unitName i.name} = {
                description = "OpenClaw container ${i.name} (rootless Podman; egress only through credproxy)";
                wantedBy = ["multi-user.target"];
                after = ["credproxy.service" "systemd-tmpfiles-setup.service" "credproxy-ca-init.service"];
                wants = ["credproxy.service"];
                path = ["/run/wrappers"];
                environment = {
                  HOME = homeDir i.name;
                  XDG_RUNTIME_DIR = "/run/${unitName i.name}";
                };
                restartTriggers = [image seccompProfile];
                serviceConfig = {
                  User = i.user;
                  Group = i.group;
                  # Root: the directories, the generated openclaw.json (with the gateway token)
                  # and, without a build-time CA, the CA bundle.
                  ExecStartPre = ["+${prepare}" "${loadImage}"];
                  ExecStart = lib.escapeShellArgs ([podman] ++ podmanGlobal ++ i.podmanArgs);
                  ExecStop = lib.escapeShellArgs ([podman] ++ podmanGlobal ++ ["stop" "--time" "30" (containerName i.name)]);
                  LoadCredential = lib.optional (i.gateway.tokenFile != null) "gateway-token:${toString i.gateway.tokenFile}";
                  RuntimeDirectory = unitName i.name;
                  RuntimeDirectoryMode = "0700";
                  Restart = "always";
                  RestartSec = 10;
                  TimeoutStartSec = 600;
                  TimeoutStopSec = 60;
                  KillMode = "mixed";
                  Delegate = true;
                  # Rootless Podman needs newuidmap/newgidmap (setuid) and user namespaces,
                  # so NoNewPrivileges and RestrictNamespaces stay off for this unit; the
                  # container itself runs with no-new-privileges and no capabilities.
                  NoNewPrivileges = false;
                  ProtectSystem = "strict";
                  ProtectHome = true;
                  PrivateTmp = true;
                  ReadWritePaths = [(homeDir i.name) (socketDir i.name) i.workspace.statePath i.workspace.path];
                  ProtectKernelTunables = true;
                  ProtectKernelModules = true;
                  ProtectKernelLogs = true;
                  ProtectClock = true;
                  ProtectHostname = true;
                  LockPersonality = true;
                  RestrictRealtime = true;
                  SystemCallArchitectures = "native";
                  LimitCORE = 0;
                  UMask = "0077";
                };
              };
            }
            (lib.listToAttrs (map (s:
              lib.nameValuePair "${unitName i.name}-${s.name}" {
                description = "Host access to the ${s.name} of OpenClaw container ${i.name} (loopback TCP to the container's socket)";
                wantedBy = ["multi-user.target"];
                after = ["${unitName i.name}.service"];
                partOf = ["${unitName i.name}.service"];
                serviceConfig =
                  cplib.hardening.bridge
                  // {
                    ExecStart = lib.escapeShellArgs [
                      (lib.getExe' cp.package "credproxy")
                      "bridge"
                      (cplib.endpoint.tcp "127.0.0.1" s.hostPort)
                      "unix:${socketDir i.name}/${s.name}.sock"
                    ];
                    # The container's bridge made the socket as the instance's user.
                    User = i.user;
                    Group = i.group;
                    Restart = "always";
                    RestartSec = 2;
                    RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"];
                  };
              })
            (hostSockets i)))
          ])
        instanceList
        ++ lib.optional hub.enable {
          credproxy-hub = {
            description = "credproxy hub: delegations and shared context between agents, as credproxy identifies them";
            wantedBy = ["multi-user.target"];
            before = ["credproxy.service"];
            serviceConfig =
              cplib.hardening.service
              // {
                Type = "notify";
                NotifyAccess = "main";
                ExecStart = lib.escapeShellArgs ([
                    (lib.getExe' cp.package "credproxy")
                    "hub"
                    "--listen"
                    hubSocket
                    "--socket-mode"
                    "0660"
                    "--trusted-user"
                    "credproxy"
                    "--state-dir"
                    hub.stateDir
                    "--audit-log"
                    hub.auditLog
                    "--rate-limit"
                    (toString hub.rateLimit)
                    "--max-delegation-depth"
                    (toString hub.maxDelegationDepth)
                    "--max-pending"
                    (toString hub.maxPending)
                    "--max-context-keys"
                    (toString hub.maxContextKeys)
                  ]
                  ++ lib.concatMap (n: ["--instance" n]) hubInstances);
                User = "credproxy-hub";
                Group = "credproxy-hub";
                StateDirectory = "credproxy-hub";
                StateDirectoryMode = "0750";
                LogsDirectory = "credproxy-hub";
                LogsDirectoryMode = "0750";
                RuntimeDirectory = "credproxy-hub";
                RuntimeDirectoryMode = "0750";
                ReadWritePaths = map (d: "-${d}") (lib.unique (map dirOf [hub.socket hub.auditLog] ++ [hub.stateDir]));
                Restart = "on-failure";
                RestartSec = 2;
                # A Unix socket and files; no network at all.
                PrivateNetwork = true;
                IPAddressDeny = "any";
                RestrictAddressFamilies = ["AF_UNIX"];
                MemoryDenyWriteExecute = true;
                SystemCallFilter = ["@system-service" "~@privileged" "~@resources"];
                UMask = "0027";
              };
          };
        });
    }

    (lib.mkIf cfg.dangerousDevMode.enable {
      warnings = [
        ''
          services.openclaw-containers.dangerousDevMode is ON: instance identities come from
          credproxy's dev issuer. NEVER use this with real credentials.
        ''
      ];
      services.credproxy.settings.identity.oidc = lib.mkDefault {
        issuer = "credproxy-dev";
        audiences = ["credproxy"];
      };
    })
  ]);
}
