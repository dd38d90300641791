# Stand-ins for the NixOS options that the project's modules (and the tests' node configs)
# set, declared with the types and merge rules nixpkgs uses, and a `system.build.toplevel`
# that depends on everything they generate (unit scripts, /etc files, the microVM guests), so
# realising it builds every generated file. Not NixOS: no activation, no unit files on disk;
# `system.build.summary` lists what NixOS would turn into units, users, tmpfiles and rules.
#
# Options that nixpkgs declares but nothing here uses are left out on purpose: a module that
# sets one fails evaluation ("The option ... does not exist") instead of passing unchecked.
{
  config,
  lib,
  pkgs,
  ...
}: let
  inherit (lib) mkOption types;

  # nixpkgs' systemd unit option type (nixos/lib/systemd-types.nix, unitOption): lists
  # concatenate, other values must be equal across definitions.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs: let
      defs' = lib.filterOverrides defs;
    in
      if lib.any (def: builtins.isList def.value) defs'
      then lib.concatMap (def: lib.toList def.value) defs'
      else lib.mergeEqualOption loc defs';
  };
  unitSettings = mkOption {
    type = types.attrsOf unitOption;
    default = {};
  };
  unitNames = mkOption {
    type = types.listOf types.str;
    default = [];
  };

  # nixpkgs' makeJobScript: the script runs with `set -e` under bash.
  jobScript = name: text:
    pkgs.writeShellScript "unit-script-${lib.replaceStrings ["@"] ["_"] name}" ''
      set -e
      ${text}
    '';

  commonUnit = {
    description = mkOption {
      type = types.str;
      default = "";
    };
    documentation = unitNames;
    wantedBy = unitNames;
    requiredBy = unitNames;
    upheldBy = unitNames;
    wants = unitNames;
    requires = unitNames;
    requisite = unitNames;
    upholds = unitNames;
    after = unitNames;
    before = unitNames;
    bindsTo = unitNames;
    partOf = unitNames;
    conflicts = unitNames;
    onFailure = unitNames;
    onSuccess = unitNames;
    aliases = unitNames;
    unitConfig = unitSettings;
    startLimitBurst = mkOption {
      type = types.nullOr types.int;
      default = null;
    };
    startLimitIntervalSec = mkOption {
      type = types.nullOr types.int;
      default = null;
    };
    restartTriggers = mkOption {
      type = types.listOf types.unspecified;
      default = [];
    };
    reloadTriggers = mkOption {
      type = types.listOf types.unspecified;
      default = [];
    };
    overrideStrategy = mkOption {
      type = types.enum ["asDropinIfExists" "asDropin"];
      default = "asDropinIfExists";
    };
    enable = mkOption {
      type = types.bool;
      default = true;
    };
  };

  serviceModule = {
    name,
    config,
    ...
  }: {
    options =
      commonUnit
      // {
        serviceConfig = unitSettings;
        environment = mkOption {
          type = types.attrsOf (types.nullOr (types.oneOf [types.str types.path types.package]));
          default = {};
        };
        path = mkOption {
          type = types.listOf (types.oneOf [types.package types.str]);
          default = [];
        };
        script = mkOption {
          type = types.lines;
          default = "";
        };
        scriptArgs = mkOption {
          type = types.str;
          default = "";
        };
        preStart = mkOption {
          type = types.lines;
          default = "";
        };
        postStart = mkOption {
          type = types.lines;
          default = "";
        };
        preStop = mkOption {
          type = types.lines;
          default = "";
        };
        postStop = mkOption {
          type = types.lines;
          default = "";
        };
        restartIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        reloadIfChanged = mkOption {
          type = types.bool;
          default = false;
        };
        stopIfChanged = mkOption {
          type = types.bool;
          default = true;
        };
        startAt = mkOption {
          type = types.either types.str (types.listOf types.str);
          default = [];
        };
      };
    # As nixpkgs (nixos/lib/systemd-unit-options.nix, serviceConfig): the scripts become
    # Exec* lines, so a unit that also sets ExecStart conflicts exactly as it would there.
    config.serviceConfig = lib.mkMerge [
      (lib.mkIf (config.script != "") {
        ExecStart = "${jobScript "${name}-start" config.script} ${config.scriptArgs}";
      })
      (lib.mkIf (config.preStart != "") {
        ExecStartPre = ["${jobScript "${name}-pre-start" config.preStart}"];
      })
      (lib.mkIf (config.postStart != "") {
        ExecStartPost = ["${jobScript "${name}-post-start" config.postStart}"];
      })
    ];
  };

  targetModule = {
    options = commonUnit;
  };

  freeform = mkOption {
    type = types.submodule {freeformType = types.attrsOf types.unspecified;};
    default = {};
  };

  userModule = {name, ...}: {
    options = {
      name = mkOption {
        type = types.str;
        default = name;
      };
      isSystemUser = mkOption {
        type = types.bool;
        default = false;
      };
      isNormalUser = mkOption {
        type = types.bool;
        default = false;
      };
      group = mkOption {
        type = types.str;
        default = "";
      };
      extraGroups = mkOption {
        type = types.listOf types.str;
        default = [];
      };
      description = mkOption {
        type = types.str;
        default = "";
      };
      home = mkOption {
        type = types.str;
        default = "/var/empty";
      };
      createHome = mkOption {
        type = types.bool;
        default = false;
      };
      uid = mkOption {
        type = types.nullOr types.int;
        default = null;
      };
      shell = mkOption {
        type = types.nullOr (types.either types.package types.str);
        default = null;
      };
      openssh.authorizedKeys.keys = mkOption {
        type = types.listOf types.str;
        default = [];
      };
      # Rootless Podman (services.openclaw-containers).
      subUidRanges = mkOption {
        type = types.listOf (types.submodule {
          options = {
            startUid = mkOption {type = types.int;};
            count = mkOption {type = types.int;};
          };
        });
        default = [];
      };
      subGidRanges = mkOption {
        type = types.listOf (types.submodule {
          options = {
            startGid = mkOption {type = types.int;};
            count = mkOption {type = types.int;};
          };
        });
        default = [];
      };
    };
  };

  groupModule = {name, ...}: {
    options = {
      name = mkOption {
        type = types.str;
        default = name;
      };
      gid = mkOption {
        type = types.nullOr types.int;
        default = null;
      };
      members = mkOption {
        type = types.listOf types.str;
        default = [];
      };
    };
  };

  etcModule = {
    name,
    config,
    ...
  }: {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      target = mkOption {
        type = types.str;
        default = name;
      };
      text = mkOption {
        type = types.nullOr types.lines;
        default = null;
      };
      source = mkOption {type = types.path;};
      mode = mkOption {
        type = types.str;
        default = "symlink";
      };
      user = mkOption {
        type = types.str;
        default = "+0";
      };
      group = mkOption {
        type = types.str;
        default = "+0";
      };
    };
    config.source = lib.mkIf (config.text != null) (lib.mkDefault (pkgs.writeText "etc-${baseNameOf name}" config.text));
  };

  nftTableModule = {name, ...}: {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      name = mkOption {
        type = types.str;
        default = name;
      };
      family = mkOption {type = types.enum ["ip" "ip6" "inet" "arp" "bridge" "netdev"];};
      content = mkOption {
        type = types.lines;
        default = "";
      };
    };
  };

  portList = mkOption {
    type = types.listOf types.port;
    default = [];
  };

  enabled = lib.filterAttrs (_: u: u.enable);

  # What NixOS makes of a service: the effective [Service] section and the dependencies.
  serviceSummary = name: s:
    {
      inherit (s) description wantedBy requiredBy wants requires after before bindsTo partOf conflicts upholds overrideStrategy;
      inherit (s) restartIfChanged reloadIfChanged startLimitBurst startLimitIntervalSec;
      serviceConfig = s.serviceConfig;
      unitConfig = s.unitConfig;
      environment = lib.filterAttrs (_: v: v != null) s.environment;
      path = map toString s.path;
      # nixpkgs writes these as X-Restart-Triggers / X-Reload-Triggers; a change of either
      # restarts or reloads the unit on switch.
      restartTriggers = builtins.hashString "sha256" (builtins.unsafeDiscardStringContext (toString s.restartTriggers));
      reloadTriggers = builtins.hashString "sha256" (builtins.unsafeDiscardStringContext (toString s.reloadTriggers));
      restartTriggerValues = map (t: builtins.unsafeDiscardStringContext (toString t)) s.restartTriggers;
      reloadTriggerValues = map (t: builtins.unsafeDiscardStringContext (toString t)) s.reloadTriggers;
    }
    // lib.optionalAttrs (s.script != "") {
      script = s.script;
    };

  nftRuleset =
    lib.concatStrings (lib.mapAttrsToList (_: t: ''
      table ${t.family} ${t.name} {
      ${t.content}
      }
    '') (enabled config.networking.nftables.tables))
    + config.networking.nftables.ruleset;

  summary = {
    hostName = config.networking.hostName;
    services = lib.mapAttrs serviceSummary (enabled config.systemd.services);
    targets = lib.mapAttrs (_: t: {inherit (t) wantedBy wants after before;}) (enabled config.systemd.targets);
    tmpfiles = config.systemd.tmpfiles.rules;
    users = lib.mapAttrs (_: u: {inherit (u) isSystemUser isNormalUser group extraGroups home uid subUidRanges subGidRanges;}) config.users.users;
    groups = lib.attrNames config.users.groups;
    groupIds = lib.mapAttrs (_: g: g.gid) config.users.groups;
    podman = {inherit (config.virtualisation.podman) enable;};
    etc = lib.mapAttrs (_: e: {
      source = toString e.source;
      inherit (e) mode user group text;
    }) (enabled config.environment.etc);
    systemPackages = map (p: p.pname or p.name or (toString p)) config.environment.systemPackages;
    environmentVariables = config.environment.variables;
    nftables = {
      inherit (config.networking.nftables) enable;
      ruleset = nftRuleset;
    };
    nat = {inherit (config.networking.nat) enable internalInterfaces externalInterface;};
    firewall = {
      inherit (config.networking.firewall) enable allowedTCPPorts allowedUDPPorts;
      interfaces = lib.mapAttrs (_: i: {inherit (i) allowedTCPPorts allowedUDPPorts;}) config.networking.firewall.interfaces;
    };
    kernelModules = config.boot.kernelModules;
    autologinUser = config.services.getty.autologinUser;
    failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
    inherit (config) warnings;
  };
in {
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [];
      internal = true;
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [];
    };

    system = {
      stateVersion = mkOption {type = types.str;};
      build = mkOption {
        type = types.lazyAttrsOf types.unspecified;
        default = {};
      };
      boot.loader.initrdFile = mkOption {
        type = types.str;
        default = "initrd";
      };
    };

    nixpkgs = {
      hostPlatform = mkOption {
        type = types.either types.str types.attrs;
        default = pkgs.system;
      };
      overlays = mkOption {
        type = types.listOf types.unspecified;
        default = [];
      };
    };

    nix.optimise.automatic = mkOption {
      type = types.bool;
      default = false;
    };

    boot = {
      kernelModules = mkOption {
        type = types.listOf types.str;
        default = [];
      };
      kernel.sysctl = mkOption {
        type = types.attrsOf types.unspecified;
        default = {};
      };
      kernelPackages = mkOption {
        type = types.attrsOf types.unspecified;
        default.kernel = pkgs.standIn.package "linux" {version = "6.12.0";};
      };
      kernelParams = mkOption {
        type = types.listOf types.str;
        default = [];
      };
    };

    networking = {
      hostName = mkOption {
        type = types.str;
        default = "nixos";
      };
      useDHCP = mkOption {
        type = types.bool;
        default = true;
      };
      useNetworkd = mkOption {
        type = types.bool;
        default = false;
      };
      primaryIPAddress = mkOption {
        type = types.str;
        default = "";
      };
      firewall = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        allowedTCPPorts = portList;
        allowedUDPPorts = portList;
        trustedInterfaces = mkOption {
          type = types.listOf types.str;
          default = [];
        };
        interfaces = mkOption {
          type = types.attrsOf (types.submodule {
            options = {
              allowedTCPPorts = portList;
              allowedUDPPorts = portList;
            };
          });
          default = {};
        };
      };
      nat = {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        internalInterfaces = mkOption {
          type = types.listOf types.str;
          default = [];
        };
        externalInterface = mkOption {
          type = types.nullOr types.str;
          default = null;
        };
      };
      nftables = {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        ruleset = mkOption {
          type = types.lines;
          default = "";
        };
        tables = mkOption {
          type = types.attrsOf (types.submodule nftTableModule);
          default = {};
        };
      };
    };

    users = {
      users = mkOption {
        type = types.attrsOf (types.submodule userModule);
        default = {};
      };
      groups = mkOption {
        type = types.attrsOf (types.submodule groupModule);
        default = {};
      };
    };

    environment = {
      etc = mkOption {
        type = types.attrsOf (types.submodule etcModule);
        default = {};
      };
      systemPackages = mkOption {
        type = types.listOf types.package;
        default = [];
      };
      variables = mkOption {
        type = types.attrsOf (types.either types.str (types.listOf types.str));
        default = {};
      };
      extraInit = mkOption {
        type = types.lines;
        default = "";
      };
    };

    systemd = {
      services = mkOption {
        type = types.attrsOf (types.submodule serviceModule);
        default = {};
      };
      targets = mkOption {
        type = types.attrsOf (types.submodule targetModule);
        default = {};
      };
      tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [];
      };
      network = {
        enable = mkOption {
          type = types.bool;
          default = false;
        };
        networks = mkOption {
          type = types.attrsOf (types.submodule {freeformType = types.attrsOf types.unspecified;});
          default = {};
        };
        netdevs = mkOption {
          type = types.attrsOf (types.submodule {freeformType = types.attrsOf types.unspecified;});
          default = {};
        };
      };
    };

    services = {
      udev.extraRules = mkOption {
        type = types.lines;
        default = "";
      };
      getty.autologinUser = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      # Used only by the NixOS tests' nodes and the documentation's example.
      nginx = freeform;
      openbao = freeform;
    };

    virtualisation.podman = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      package = mkOption {
        type = types.package;
        default = pkgs.podman;
      };
    };

    security = {
      polkit.extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      pam.loginLimits = mkOption {
        type = types.listOf types.attrs;
        default = [];
      };
    };
  };

  config = {
    # Users and groups that NixOS itself declares (nixos/modules/misc/ids.nix and the
    # systemd, users and microvm modules); the harness checks every name against these.
    users.groups = lib.genAttrs ["root" "wheel" "kvm" "users" "nogroup" "systemd-journal" "keys"] (_: {});
    users.users = {
      root = {
        group = "root";
        home = "/root";
        isSystemUser = lib.mkDefault false;
      };
      nobody = {
        group = "nogroup";
        isSystemUser = true;
      };
    };

    # nixpkgs' users-groups.nix assertions (the two that apply to every user).
    assertions = lib.concatLists (lib.mapAttrsToList (n: u:
      lib.optionals (n != "root") [
        {
          assertion = u.isSystemUser != u.isNormalUser;
          message = "Exactly one of users.users.${n}.isSystemUser and users.users.${n}.isNormalUser must be set.";
        }
        {
          assertion = u.isNormalUser || u.group != "";
          message = "users.users.${n}.group is unset. This used to default to nogroup, but this is unsafe.";
        }
      ])
    config.users.users);

    system.build.summary = summary;

    # Like nixpkgs: a configuration with a failed assertion has no top level.
    system.build.toplevel = let
      failed = summary.failedAssertions;
    in
      if failed != []
      then throw "\nFailed assertions:\n${lib.concatMapStrings (m: "- ${m}\n") failed}"
      else
        pkgs.runCommand "nixos-system-${config.networking.hostName}" {
          # Every generated file, script and guest is an input: realising the top level
          # builds (and checks) all of them.
          manifest = builtins.toJSON {
            services = lib.mapAttrs (_: s: s.serviceConfig) summary.services;
            etc = lib.mapAttrs (_: e: e.source) (enabled config.environment.etc);
          };
          passAsFile = ["manifest"];
        } ''
          mkdir -p $out
          cp "$manifestPath" $out/manifest.json
        '';
  };
}
