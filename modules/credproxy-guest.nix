# services.credproxy-guest: inside an agent VM. Runs `credproxy bridge` from a loopback port to
# this VM's credproxy listener on the host over VSOCK. The bridge carries no token and the
# guest holds no secret: the host's listener accepts this VM only and authenticates its
# connections as the VM's agent (the proxy obtains that agent's token on the host). Collects
# what the host delivered (the proxy CA's certificate, the placeholder environment) into
# /run/credproxy, readable by everyone in the VM: neither is a secret.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.credproxy-guest;
  cplib = import ../nix/lib.nix {inherit lib;};
  inherit (lib) mkOption types literalExpression;

  runDir = "/run/credproxy";
  caFile = "${runDir}/ca.crt";
  placeholderEnvFile = "${runDir}/placeholder.env";
  proxyUrl = "http://${cfg.listen.address}:${toString cfg.listen.port}";
  fromDirectory = cfg.delivery.method == "directory";

  # systemd `LoadCredential=ID:SOURCE` for a file the host delivered: a relative SOURCE names
  # a credential the system received (fw_cfg / SMBIOS), an absolute one a file in the share.
  credentialSource = name:
    if fromDirectory
    then "${cfg.delivery.directory}/${name}"
    else name;

  proxyEnvironment = {
    HTTPS_PROXY = proxyUrl;
    HTTP_PROXY = proxyUrl;
    https_proxy = proxyUrl;
    http_proxy = proxyUrl;
    NO_PROXY = lib.concatStringsSep "," cfg.noProxy;
    no_proxy = lib.concatStringsSep "," cfg.noProxy;
    # Node >= 24 honours the proxy variables only with this; OpenClaw requires Node >= 24.
    NODE_USE_ENV_PROXY = "1";
    # Every TLS peer an agent sees is a leaf minted by the proxy CA: trust that CA alone.
    NODE_EXTRA_CA_CERTS = caFile;
    NODE_OPTIONS = "--use-openssl-ca";
    SSL_CERT_FILE = caFile;
    CURL_CA_BUNDLE = caFile;
    REQUESTS_CA_BUNDLE = caFile;
    GIT_SSL_CAINFO = caFile;
    AWS_CA_BUNDLE = caFile;
  };
in {
  options.services.credproxy-guest = {
    enable = lib.mkEnableOption "the guest side of credproxy: the VSOCK bridge to this VM's listener, and the proxy environment";

    package = lib.mkPackageOption pkgs "credproxy" {
      extraDescription = "The flake's `nixosModules.credproxy-guest` sets this to its own build.";
    };

    listen = {
      address = mkOption {
        type = types.str;
        default = "127.0.0.1";
        description = "Loopback address the bridge listens on (the agents' HTTP(S) proxy).";
        example = "127.0.0.1";
      };
      port = mkOption {
        type = types.port;
        default = 18790;
        description = "Loopback port the bridge listens on.";
        example = 18790;
      };
    };

    hostVsockPort = mkOption {
      type = types.ints.u32;
      default = 18790;
      description = "VSOCK port of this VM's credproxy listener on the host (CID 2).";
      example = 18794;
    };

    delivery = {
      method = mkOption {
        type = types.enum ["systemd-credentials" "directory"];
        default = "systemd-credentials";
        description = ''
          How the host's files arrive: as systemd credentials (QEMU fw_cfg, microvm.nix
          `credentialFiles`) or as files in a read-only share (Cloud Hypervisor).
        '';
        example = "directory";
      };
      directory = mkOption {
        type = types.str;
        default = "/run/credproxy-host";
        description = "Mount point of the read-only share when the method is `directory`.";
        example = "/mnt/credproxy";
      };
      credentialSource = mkOption {
        type = types.functionTo types.str;
        readOnly = true;
        default = credentialSource;
        defaultText = literalExpression "name: name (systemd credentials) or \"<directory>/<name>\"";
        description = "The `LoadCredential=` source of a file the host delivered, by name (for other guest services).";
        example = literalExpression ''"openclaw-gateway-token"'';
      };
    };

    caCertificate = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = ''
        The proxy CA certificate at build time (public, may be a store path). When null, it
        arrives at boot as the credential `credproxy-ca`.
      '';
      example = literalExpression "./credproxy-ca.crt";
    };

    noProxy = mkOption {
      type = types.listOf types.str;
      default = ["localhost" "127.0.0.1" "::1"];
      description = "Destinations that bypass the proxy (loopback only: nothing else is reachable).";
      example = ["localhost" "127.0.0.1"];
    };

    environment = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      default = proxyEnvironment;
      defaultText = literalExpression "{ HTTPS_PROXY = \"http://127.0.0.1:18790\"; NODE_USE_ENV_PROXY = \"1\"; SSL_CERT_FILE = \"/run/credproxy/ca.crt\"; ... }";
      description = "Environment that points a service at the proxy; add it to every agent-facing service.";
      example = {HTTPS_PROXY = "http://127.0.0.1:18790";};
    };

    placeholderEnvironmentFile = mkOption {
      type = types.str;
      readOnly = true;
      default = placeholderEnvFile;
      description = "`EnvironmentFile=` with the placeholders (`ANTHROPIC_API_KEY=agent-vault-…`), written at boot.";
      example = placeholderEnvFile;
    };

    unitDependencies = mkOption {
      type = types.listOf types.str;
      readOnly = true;
      default = ["credproxy-guest-files.service" "credproxy-bridge.service"];
      description = "Units an agent service should want and start after.";
      example = ["credproxy-bridge.service"];
    };
  };

  config = lib.mkIf cfg.enable {
    environment.variables = proxyEnvironment;
    environment.extraInit = ''
      if [ -r ${placeholderEnvFile} ]; then
        set -a; . ${placeholderEnvFile}; set +a
      fi
    '';

    # Only root may read raw fw_cfg; agents get what the units below hand out.
    services.udev.extraRules = ''
      SUBSYSTEM=="firmware", KERNEL=="qemu_fw_cfg", MODE="0400"
    '';

    systemd.services.credproxy-guest-files = {
      description = "credproxy: install the proxy CA certificate and the placeholder environment";
      wantedBy = ["multi-user.target"];
      after = lib.optional fromDirectory "local-fs.target";
      path = [pkgs.coreutils];
      script = ''
        set -euo pipefail
        src=${
          if fromDirectory
          then lib.escapeShellArg cfg.delivery.directory
          else ''"''${CREDENTIALS_DIRECTORY:-/nonexistent}"''
        }
        install -d -m 0755 ${runDir}
        ${
          if cfg.caCertificate != null
          then "install -m 0444 ${cfg.caCertificate} ${caFile}"
          else ''
            for _ in $(seq 1 60); do [ -s "$src/credproxy-ca" ] && break; sleep 1; done
            install -m 0444 "$src/credproxy-ca" ${caFile}
          ''
        }
        if [ -r "$src/credproxy-placeholder-env" ]; then
          install -m 0444 "$src/credproxy-placeholder-env" ${placeholderEnvFile}
        else
          install -m 0444 /dev/null ${placeholderEnvFile}
        fi
      '';
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ImportCredential = lib.mkIf (!fromDirectory) ["credproxy-*"];
        CapabilityBoundingSet = ["CAP_DAC_OVERRIDE" "CAP_CHOWN" "CAP_FOWNER"];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateNetwork = true;
        ReadWritePaths = ["/run"];
        ProtectProc = "invisible";
        RestrictAddressFamilies = "none";
        SystemCallArchitectures = "native";
        SystemCallFilter = ["@system-service" "~@resources"];
        LimitCORE = 0;
        MemorySwapMax = 0;
        UMask = "0022";
      };
    };

    systemd.services.credproxy-bridge = {
      description = "credproxy bridge: loopback proxy port to this VM's listener on the host over VSOCK";
      wantedBy = ["multi-user.target"];
      after = ["credproxy-guest-files.service"];
      serviceConfig =
        cplib.hardening.bridge
        // {
          ExecStart = lib.escapeShellArgs [
            (lib.getExe' cfg.package "credproxy")
            "bridge"
            (cplib.endpoint.tcp cfg.listen.address cfg.listen.port)
            (cplib.endpoint.vsock 2 cfg.hostVsockPort)
          ];
          DynamicUser = true;
          Restart = "always";
          RestartSec = 2;
          RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6" "AF_VSOCK"];
        };
    };
  };
}
