# services.credproxy-openbao: the read-only ACL policy (and optionally the AppRole) that
# credproxy needs on a production OpenBao, for use with nixpkgs' `services.openbao`.
#
# nixpkgs' openbao module configures the server but not its policies, so this module renders
# the policy to the store (policies are not secret) and, when asked, applies it with a oneshot
# that authenticates with an admin token read from a file at run time.
{
  config,
  lib,
  pkgs,
  ...
}: let
  cfg = config.services.credproxy-openbao;
  cplib = import ../nix/lib.nix {inherit lib;};
  inherit (lib) mkOption types literalExpression;

  prefix = lib.removeSuffix "/" cfg.pathPrefix;
  policyText = ''
    # credproxy: read the credentials it injects, nothing else.
    path "${cfg.kvMount}/data/${prefix}/*" {
      capabilities = ["read"]
    }
    path "${cfg.kvMount}/metadata/${prefix}/*" {
      capabilities = ["read", "list"]
    }
    # Let the proxy renew and look up its own token.
    path "auth/token/renew-self" {
      capabilities = ["update"]
    }
    path "auth/token/lookup-self" {
      capabilities = ["read"]
    }
  '';
  policyFile = pkgs.writeText "${cfg.policyName}.hcl" policyText;
  address =
    if cfg.address != null
    then cfg.address
    else "http://127.0.0.1:8200";
in {
  options.services.credproxy-openbao = {
    enable = lib.mkEnableOption "the credproxy read-only OpenBao policy (and AppRole) on this host's OpenBao";

    package = lib.mkPackageOption pkgs "openbao" {};

    policyName = mkOption {
      type = types.strMatching "[a-z0-9_-]+";
      default = "credproxy-readonly";
      description = "Name of the ACL policy.";
      example = "credproxy";
    };

    kvMount = mkOption {
      type = types.str;
      default = "secret";
      description = "Mount of the KV v2 engine holding the credentials.";
      example = "kv";
    };

    pathPrefix = mkOption {
      type = types.str;
      default = "openclaw/credentials";
      description = "Path under the mount below which credproxy may read (the credentials' `source.openbao.path`s).";
      example = "agents/credentials";
    };

    policy = mkOption {
      type = types.lines;
      readOnly = true;
      default = policyText;
      defaultText = literalExpression "read on <kvMount>/data/<pathPrefix>/*, read+list on metadata, token self-renewal";
      description = "The rendered HCL policy.";
      example = ''path "secret/data/openclaw/credentials/*" { capabilities = ["read"] }'';
    };

    policyFile = mkOption {
      type = types.path;
      readOnly = true;
      default = policyFile;
      defaultText = literalExpression ''pkgs.writeText "credproxy-readonly.hcl" policy'';
      description = "The policy as a file, for `bao policy write NAME FILE` or other tooling.";
      example = "/nix/store/...-credproxy-readonly.hcl";
    };

    apply = {
      enable = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Apply the policy (and the AppRole below) with a oneshot after `openbao.service`.
          Needs {option}`services.credproxy-openbao.apply.adminTokenFile`.
        '';
        example = true;
      };
      adminTokenFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "File holding a token allowed to write policies and AppRoles (read at run time as a systemd credential).";
        example = "/run/secrets/openbao-admin-token";
      };
      caFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "CA certificate to verify OpenBao (BAO_CACERT).";
        example = "/etc/openbao/ca.pem";
      };
    };

    address = mkOption {
      type = types.nullOr types.str;
      default = null;
      defaultText = literalExpression ''"http://127.0.0.1:8200"'';
      description = "OpenBao API address used to apply the policy.";
      example = "https://127.0.0.1:8200";
    };

    approle = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Also create (or update) the AppRole credproxy logs in with, bound to the policy only.";
        example = false;
      };
      name = mkOption {
        type = types.str;
        default = "credproxy";
        description = "AppRole role name.";
        example = "credproxy-host1";
      };
      mount = mkOption {
        type = types.str;
        default = "approle";
        description = "Mount of the AppRole auth method (enabled if missing).";
        example = "approle";
      };
      tokenTtl = mkOption {
        type = types.str;
        default = "20m";
        description = "TTL of tokens issued to credproxy (it renews them).";
        example = "1h";
      };
      tokenMaxTtl = mkOption {
        type = types.str;
        default = "24h";
        description = "Maximum TTL of those tokens.";
        example = "4h";
      };
      secretIdBoundCidrs = mkOption {
        type = types.listOf types.str;
        default = ["127.0.0.1/32" "::1/128"];
        description = "Where the secret id may be used from.";
        example = ["10.0.0.5/32"];
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      cplib.secretPathAssertions [
        {
          what = "services.credproxy-openbao.apply.adminTokenFile";
          value = cfg.apply.adminTokenFile;
        }
      ]
      ++ [
        {
          assertion = !cfg.apply.enable || cfg.apply.adminTokenFile != null;
          message = "services.credproxy-openbao.apply.enable needs services.credproxy-openbao.apply.adminTokenFile.";
        }
      ];

    environment.etc."credproxy/openbao-policy.hcl".source = policyFile;

    systemd.services.credproxy-openbao-policy = lib.mkIf cfg.apply.enable {
      description = "Apply credproxy's read-only OpenBao policy and AppRole";
      wantedBy = ["multi-user.target"];
      after = ["openbao.service" "network-online.target"];
      wants = ["network-online.target"];
      before = ["credproxy.service"];
      path = [cfg.package pkgs.coreutils];
      environment =
        {
          BAO_ADDR = address;
          HOME = "/run/credproxy-openbao-policy";
        }
        // lib.optionalAttrs (cfg.apply.caFile != null) {BAO_CACERT = cfg.apply.caFile;};
      script = ''
        set -euo pipefail
        BAO_TOKEN=$(cat "$CREDENTIALS_DIRECTORY/admin-token")
        export BAO_TOKEN
        bao policy write ${lib.escapeShellArg cfg.policyName} ${policyFile}
        ${lib.optionalString cfg.approle.enable ''
          bao auth list -format=json | grep -q '"${cfg.approle.mount}/"' \
            || bao auth enable -path=${lib.escapeShellArg cfg.approle.mount} approle
          bao write auth/${cfg.approle.mount}/role/${cfg.approle.name} \
            token_policies=${lib.escapeShellArg cfg.policyName} \
            token_ttl=${cfg.approle.tokenTtl} token_max_ttl=${cfg.approle.tokenMaxTtl} \
            secret_id_bound_cidrs=${lib.escapeShellArg (lib.concatStringsSep "," cfg.approle.secretIdBoundCidrs)} \
            token_bound_cidrs=${lib.escapeShellArg (lib.concatStringsSep "," cfg.approle.secretIdBoundCidrs)}
        ''}
      '';
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        DynamicUser = true;
        RuntimeDirectory = "credproxy-openbao-policy";
        LoadCredential = ["admin-token:${toString cfg.apply.adminTokenFile}"];
        CapabilityBoundingSet = "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectProc = "invisible";
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictNamespaces = true;
        RestrictAddressFamilies = ["AF_UNIX" "AF_INET" "AF_INET6"];
        SystemCallArchitectures = "native";
        SystemCallFilter = ["@system-service" "~@privileged" "~@resources"];
        LimitCORE = 0;
        MemorySwapMax = 0;
        UMask = "0077";
      };
    };
  };
}
