# services.openclaw-guest: inside an agent VM. The OpenClaw gateway and OpenCode as hardened
# services bound to loopback, with the proxy environment of services.credproxy-guest, and a
# VSOCK listener that lets the host reach the gateway (the VM has no inbound IP path). The
# gateway's openclaw.json is generated from typed options; its auth token arrives as a
# credential and is put in at service start, so it never enters the Nix store.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.openclaw-guest;
  proxy = config.services.credproxy-guest;
  cplib = import ../nix/lib.nix {inherit lib;};
  inherit (lib) mkOption types literalExpression;

  stateDir = "/var/lib/openclaw";
  workspace = "${stateDir}/workspace";
  jsonFormat = pkgs.formats.json {};
  # Everything of openclaw.json but the token.
  settingsFile = jsonFormat.generate "openclaw.json" cfg.settings;
  runtimeConfig = "/run/openclaw-gateway/openclaw.json";

  # Hardening shared by the agent services. MemoryDenyWriteExecute stays off: V8 and Bun JIT.
  agentHardening =
    cplib.hardening.service
    // {
      RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"];
    };
in {
  options.services.openclaw-guest = {
    enable = lib.mkEnableOption "the OpenClaw gateway (and OpenCode) inside an agent VM";

    package = mkOption {
      type = types.nullOr types.package;
      default = pkgs.openclaw or null;
      defaultText = literalExpression "pkgs.openclaw or null";
      description = ''
        The OpenClaw package (from the `nix-openclaw` flake or an overlay). It is built into the
        VM's closure; nothing is fetched at run time.
      '';
      example = literalExpression "inputs.nix-openclaw.packages.x86_64-linux.openclaw";
    };

    gatewayPort = mkOption {
      type = types.port;
      default = 18789;
      description = "Gateway port on the guest's loopback.";
      example = 18789;
    };

    gatewayVsockPort = mkOption {
      type = types.nullOr types.port;
      default = 18789;
      description = "VSOCK port on which the host reaches the gateway; null: no host access.";
      example = 18789;
    };

    settings = mkOption {
      default = {};
      description = ''
        The gateway's `openclaw.json` (any OpenClaw key; the usual ones are typed). The auth
        token is not set here: it comes from the credential
        {option}`services.openclaw-guest.gatewayTokenCredential` at service start.
      '';
      example = {gateway.http.endpoints.chatCompletions.enabled = true;};
      type = types.submodule {
        freeformType = jsonFormat.type;
        options.gateway = {
          mode = mkOption {
            type = types.enum ["local" "remote"];
            default = "local";
            description = "Gateway mode: `local` runs the agent in this VM.";
            example = "local";
          };
          bind = mkOption {
            type = types.str;
            default = "loopback";
            description = "Where the gateway listens; the host reaches it over VSOCK only.";
            example = "loopback";
          };
          port = mkOption {
            type = types.port;
            default = cfg.gatewayPort;
            defaultText = literalExpression "config.services.openclaw-guest.gatewayPort";
            description = "Gateway port.";
            example = 18789;
          };
          auth.mode = mkOption {
            type = types.enum ["token"];
            default = "token";
            description = "Token authentication (the token from the credential).";
            example = "token";
          };
          http.endpoints.chatCompletions.enabled = mkOption {
            type = types.bool;
            default = true;
            description = "The OpenAI-compatible `/v1/chat/completions` endpoint, which OpenCode uses.";
            example = true;
          };
        };
      };
    };

    gatewayTokenCredential = mkOption {
      type = types.str;
      default = "openclaw-gateway-token";
      description = ''
        Name of the delivered credential holding the gateway's auth token (the host's
        services.openclaw-vm sends one per VM); read by the gateway service only.
      '';
      example = "openclaw-gateway-token";
    };

    toolPackages = mkOption {
      type = types.listOf types.package;
      default = with pkgs; [curl jq git];
      defaultText = literalExpression "with pkgs; [ curl jq git ]";
      description = "Tools for the agent: on the gateway's PATH and in the system profile.";
      example = literalExpression "with pkgs; [ curl jq git ripgrep ]";
    };

    extraEnvironment = mkOption {
      type = types.attrsOf types.str;
      default = {};
      description = "Extra environment for the gateway (non-secret; the placeholders come from credproxy-guest).";
      example = {OPENCLAW_LOG_LEVEL = "debug";};
    };

    opencode = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Run OpenCode's server on loopback, using the gateway as its model provider.";
        example = false;
      };
      package = lib.mkPackageOption pkgs "opencode" {};
      port = mkOption {
        type = types.port;
        default = 4096;
        description = "OpenCode server port on loopback.";
        example = 4096;
      };
    };

    agentUser = mkOption {
      type = types.str;
      default = "openclaw";
      description = "Interactive user for working in the VM (console, Tailscale SSH); member of the shared workspace group.";
      example = "agent";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.package != null;
        message = "services.openclaw-guest.package is not set and pkgs.openclaw does not exist; pass the package from the nix-openclaw flake.";
      }
      {
        assertion = proxy.enable;
        message = "services.openclaw-guest needs services.credproxy-guest.enable: the agent's only way out is the proxy.";
      }
      {
        assertion = !(cfg.settings.gateway.auth ? token);
        message = "services.openclaw-guest.settings.gateway.auth.token would put the token into the Nix store; deliver it as the credential services.openclaw-guest.gatewayTokenCredential instead.";
      }
    ];

    users.groups.openclaw-shared = {};
    users.groups.openclaw-gateway = {};
    users.groups.opencode-server = {};
    users.users.openclaw-gateway = {
      isSystemUser = true;
      group = "openclaw-gateway";
      extraGroups = ["openclaw-shared"];
      home = stateDir;
    };
    users.users.opencode-server = lib.mkIf cfg.opencode.enable {
      isSystemUser = true;
      group = "opencode-server";
      extraGroups = ["openclaw-shared"];
      home = "/var/lib/opencode-server";
    };
    users.users.${cfg.agentUser} = {
      isNormalUser = true;
      extraGroups = ["openclaw-shared"];
    };

    environment.systemPackages = [cfg.package] ++ lib.optional cfg.opencode.enable cfg.opencode.package ++ cfg.toolPackages;

    systemd.tmpfiles.rules = [
      "d ${stateDir} 0750 openclaw-gateway openclaw-gateway - -"
      "d ${workspace} 2770 openclaw-gateway openclaw-shared - -"
    ];

    # OpenCode talks to the gateway's OpenAI-compatible endpoint on loopback.
    environment.etc."opencode/config.json" = lib.mkIf cfg.opencode.enable {
      mode = "0444";
      text = builtins.toJSON {
        "$schema" = "https://opencode.ai/config.json";
        provider.openclaw = {
          npm = "@ai-sdk/openai-compatible";
          name = "OpenClaw gateway";
          options.baseURL = "http://127.0.0.1:${toString cfg.gatewayPort}/v1";
          models."openclaw:main" = {
            name = "openclaw:main";
            limit = {
              context = 200000;
              output = 16384;
            };
          };
        };
        model = "openclaw/openclaw:main";
        small_model = "openclaw/openclaw:main";
      };
    };

    systemd.services.openclaw-gateway = {
      description = "OpenClaw gateway (loopback only; egress through credproxy)";
      wantedBy = ["multi-user.target"];
      wants = proxy.unitDependencies;
      after = proxy.unitDependencies ++ ["network.target"];
      startLimitIntervalSec = 300;
      startLimitBurst = 5;
      path = cfg.toolPackages;
      environment =
        proxy.environment
        // {
          HOME = stateDir;
          XDG_CONFIG_HOME = "${stateDir}/.config";
          OPENCLAW_STATE_DIR = stateDir;
          OPENCLAW_CONFIG_PATH = runtimeConfig;
          NODE_ENV = "production";
        }
        // cfg.extraEnvironment;
      serviceConfig =
        agentHardening
        // {
          # openclaw.json = the generated settings + the token from the credential, written
          # into this service's runtime directory (0700) at every start.
          ExecStartPre = "${pkgs.writeShellScript "openclaw-gateway-config" ''
            set -euo pipefail
            umask 0077
            ${lib.getExe pkgs.jq} --rawfile token "$CREDENTIALS_DIRECTORY/gateway-token" \
              '.gateway.auth.token = ($token | rtrimstr("\n"))' ${settingsFile} > ${runtimeConfig}.new
            mv -f ${runtimeConfig}.new ${runtimeConfig}
          ''}";
          ExecStart = "${lib.getExe' cfg.package "openclaw"} gateway --bind ${cfg.settings.gateway.bind} --port ${toString cfg.settings.gateway.port}";
          RuntimeDirectory = "openclaw-gateway";
          RuntimeDirectoryMode = "0700";
          LoadCredential = ["gateway-token:${proxy.delivery.credentialSource cfg.gatewayTokenCredential}"];
          EnvironmentFile = proxy.placeholderEnvironmentFile;
          User = "openclaw-gateway";
          Group = "openclaw-gateway";
          SupplementaryGroups = ["openclaw-shared"];
          StateDirectory = "openclaw";
          StateDirectoryMode = "0750";
          WorkingDirectory = workspace;
          ReadWritePaths = [workspace];
          Restart = "always";
          RestartSec = 5;
          RestartSteps = 5;
          RestartMaxDelaySec = 60;
          SystemCallFilter = ["@system-service" "~@privileged" "~@resources"];
          MemoryDenyWriteExecute = false;
        };
    };

    systemd.services.opencode-server = lib.mkIf cfg.opencode.enable {
      description = "OpenCode server (loopback only; egress through credproxy)";
      wantedBy = ["multi-user.target"];
      wants = proxy.unitDependencies ++ ["openclaw-gateway.service"];
      after = proxy.unitDependencies ++ ["openclaw-gateway.service"];
      environment =
        proxy.environment
        // {
          HOME = "/var/lib/opencode-server";
          XDG_CONFIG_HOME = "/var/lib/opencode-server/.config";
          XDG_DATA_HOME = "/var/lib/opencode-server/.local/share";
          XDG_CACHE_HOME = "/var/lib/opencode-server/.cache";
          OPENCODE_CONFIG = "/etc/opencode/config.json";
        };
      serviceConfig =
        agentHardening
        // {
          ExecStart = "${lib.getExe' cfg.opencode.package "opencode"} serve --hostname 127.0.0.1 --port ${toString cfg.opencode.port}";
          EnvironmentFile = proxy.placeholderEnvironmentFile;
          User = "opencode-server";
          Group = "opencode-server";
          SupplementaryGroups = ["openclaw-shared"];
          StateDirectory = "opencode-server";
          StateDirectoryMode = "0750";
          WorkingDirectory = workspace;
          ReadWritePaths = [workspace];
          Restart = "on-failure";
          RestartSec = 5;
          # Bun's syscall set has not been audited; keep the filter broad but present.
          SystemCallFilter = ["@system-service" "@resources"];
          MemoryDenyWriteExecute = false;
        };
    };

    # Host -> gateway, over VSOCK only: the host runs the matching `credproxy bridge`.
    systemd.services.openclaw-gateway-vsock = lib.mkIf (cfg.gatewayVsockPort != null) {
      description = "VSOCK listener for host access to the OpenClaw gateway";
      wantedBy = ["multi-user.target"];
      after = ["openclaw-gateway.service"];
      serviceConfig =
        cplib.hardening.bridge
        // {
          ExecStart = lib.escapeShellArgs [
            (lib.getExe' proxy.package "credproxy")
            "bridge"
            (cplib.endpoint.vsock "any" cfg.gatewayVsockPort)
            (cplib.endpoint.tcp "127.0.0.1" cfg.gatewayPort)
          ];
          DynamicUser = true;
          Restart = "always";
          RestartSec = 2;
          RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6" "AF_VSOCK"];
        };
    };

    # Agents and their users may not drive systemd or read the journal.
    security.polkit.extraConfig = ''
      polkit.addRule(function(action, subject) {
        var agents = ["${cfg.agentUser}", "openclaw-gateway", "opencode-server"];
        if (agents.indexOf(subject.user) >= 0 &&
            (action.id.indexOf("org.freedesktop.systemd1.") == 0 ||
             action.id == "org.freedesktop.login1.journal-read")) {
          return polkit.Result.NO;
        }
      });
    '';
  };
}
