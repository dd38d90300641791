# Stand-in for the parts of nixpkgs the project's Nix code uses, for evaluation without
# nixpkgs (scripts/check-nix). Two kinds of values:
#
# - Generated files (writeText, writeTextFile, writeShellScript, runCommand, formats.*) are
#   real derivations built by /bin/sh from the host system's coreutils, so the harness can
#   realise them in its private store and run what they contain (configs, scripts, checks).
#   A `checkPhase` runs as in nixpkgs: the credproxy config's `check-config` runs for real.
# - Packages (credproxy, coreutils, openbao, ...) are placeholders: attribute sets that look
#   like derivations (`type = "derivation"`, an `outPath` under the store) and are never
#   built. `credproxy` points at a real installation prefix when the harness passes one, so
#   the generated command lines run unchanged.
{
  lib,
  system,
  # A directory with bin/credproxy (the binary under test); null: a placeholder path.
  credproxyPrefix ? null,
  # The stand-in nixpkgs tree (its nixos/lib/eval-config.nix evaluates microVM guests).
  nixpkgsPath,
}: let
  storeDir = builtins.storeDir;
  canBuild = system == builtins.currentSystem;

  # A store-path-like name that nothing builds: 32 characters of Nix's base32 alphabet.
  fakeHash = seed: builtins.substring 0 32 (builtins.replaceStrings ["e"] ["z"] (builtins.hashString "sha256" "stand-in:${system}:${seed}"));

  package = name: attrs: let
    self =
      {
        type = "derivation";
        inherit name system;
        pname = name;
        version = "0-stand-in";
        outPath = "${storeDir}/${fakeHash name}-${name}";
        outputName = "out";
        outputs = ["out"];
        out = self;
        meta = {
          mainProgram = name;
          description = "stand-in for pkgs.${name}";
        };
        passthru = {};
        override = _: self;
        overrideAttrs = _: self;
        standIn = true;
      }
      // attrs;
  in
    self;

  credproxy = package "credproxy" (lib.optionalAttrs (credproxyPrefix != null) {
    outPath = toString credproxyPrefix;
  });

  # A real derivation built with /bin/sh and the host's tools (PATH below).
  shDerivation = name: env: script:
    derivation ({
        inherit name;
        system =
          if canBuild
          then system
          else builtins.currentSystem;
        builder = "/bin/sh";
        args = ["-c" script];
        PATH = "/usr/local/bin:/usr/bin:/bin";
      }
      // env);

  writeTextFile = {
    name,
    text,
    executable ? false,
    destination ? "",
    checkPhase ? "",
    ...
  }:
    shDerivation name {
      inherit text;
      passAsFile = ["text"];
    } ''
      set -e
      target="$out"${lib.escapeShellArg destination}
      mkdir -p "$(dirname "$target")"
      cp "$textPath" "$target"
      ${lib.optionalString executable ''chmod +x "$target"''}
      ${checkPhase}
    ''
    // {inherit text;};

  writeText = name: text: writeTextFile {inherit name text;};

  runtimeShell = "/bin/bash";

  writeShellScript = name: text:
    writeTextFile {
      inherit name;
      executable = true;
      text = ''
        #!${runtimeShell}
        ${text}
      '';
    };

  runCommand = name: env: script:
    shDerivation name (lib.mapAttrs (_: v:
      if builtins.isBool v
      then
        (
          if v
          then "1"
          else ""
        )
      else v) (builtins.removeAttrs env ["nativeBuildInputs" "buildInputs" "meta" "passthru"])) ''
      set -e
      ${script}
    '';

  # nixpkgs' pkgs.formats: the same option types; `generate` writes JSON, which is both the
  # YAML subset credproxy reads and what the modules render.
  jsonValueType = let
    valueType =
      lib.types.nullOr (lib.types.oneOf [
        lib.types.bool
        lib.types.int
        lib.types.float
        lib.types.str
        lib.types.path
        (lib.types.attrsOf valueType)
        (lib.types.listOf valueType)
      ])
      // {description = "YAML/JSON value";};
  in
    valueType;
  jsonFormat = {
    type = jsonValueType;
    generate = name: value: writeText name (builtins.toJSON value);
  };

  callPackage = fn: args: let
    f =
      if builtins.isFunction fn
      then fn
      else import fn;
    wanted = builtins.functionArgs f;
  in
    f ((builtins.intersectAttrs wanted pkgs) // args);

  pkgs =
    {
      inherit lib system callPackage runCommand writeText writeTextFile writeShellScript runtimeShell credproxy;
      path = nixpkgsPath;
      # For the harness's own stand-ins (nix/eval/nixos.nix, microvm-host.nix).
      standIn = {inherit package shDerivation;};
      stdenv = {
        hostPlatform = {
          inherit system;
          isLinux = true;
          isDarwin = false;
          isx86_64 = system == "x86_64-linux";
          isAarch64 = system == "aarch64-linux";
        };
        buildPlatform = pkgs.stdenv.hostPlatform;
      };
      buildPackages = pkgs;
      formats = {
        yaml = _: jsonFormat;
        json = _: jsonFormat;
      };
      writeShellScriptBin = name: text:
        writeTextFile {
          inherit name;
          executable = true;
          destination = "/bin/${name}";
          text = ''
            #!${runtimeShell}
            ${text}
          '';
        };
      writeTextDir = path: text:
        writeTextFile {
          name = builtins.baseNameOf path;
          inherit text;
          destination = "/${path}";
        };
      linkFarm = name: entries: let
        list =
          if builtins.isList entries
          then entries
          else
            lib.mapAttrsToList (n: p: {
              name = n;
              path = p;
            })
            entries;
      in
        runCommand name {} ''
          mkdir -p $out
          ${lib.concatMapStrings (e: ''
              mkdir -p "$(dirname $out/${lib.escapeShellArg e.name})"
              ln -s ${lib.escapeShellArg (toString e.path)} $out/${lib.escapeShellArg e.name}
            '')
            list}
        '';
      rustPlatform = {
        rustLibSrc = package "rust-lib-src" {};
        # Records its arguments; the package's `src` (a lib.fileset source) is real. The
        # credproxy build is the binary under test when the harness passes one.
        buildRustPackage = args:
          package "${args.pname}-${args.version}" ({
              inherit (args) pname version src;
              meta = args.meta or {};
              buildArgs = args;
            }
            // lib.optionalAttrs (args.pname == "credproxy" && credproxyPrefix != null) {
              outPath = toString credproxyPrefix;
            });
      };
      mkShell = args: package "nix-shell" {shellArgs = args;};
      # An image is a placeholder that records what it is built from (never built here);
      # its name and tag are what podman would load.
      dockerTools.streamLayeredImage = args:
        package "stream-${baseNameOf args.name}" {
          imageName = lib.toLower args.name;
          imageTag = args.tag or (fakeHash (builtins.toJSON (builtins.removeAttrs args ["contents"] // {contents = map (p: p.name or (toString p)) (args.contents or []);})));
          imageArgs = args;
        };
      testers.runNixOSTest = test: package "nixos-test-${test.name or "unnamed"}" {nixosTest = test;};
    }
    // lib.genAttrs [
      "alejandra"
      "bash"
      "bashInteractive"
      "busybox"
      "cacert"
      "cargo"
      "clippy"
      "cloud-hypervisor"
      "coreutils"
      "crosvm"
      "curl"
      "firecracker"
      "git"
      "gnugrep"
      "gnused"
      "iproute2"
      "jq"
      "netcat-openbsd"
      "nftables"
      "nodejs_24"
      "oha"
      "openbao"
      "openssl"
      "opencode"
      "podman"
      "protobuf"
      "python3"
      "qemu"
      "rust-analyzer"
      "rustc"
      "rustfmt"
      "socat"
      "systemd"
      "temporal-cli"
      "util-linux"
      "vhost-device-vsock"
      "virtiofsd"
    ] (n: package n {})
    // {
      openbao = package "openbao" {meta.mainProgram = "bao";};
      temporal-cli = package "temporal-cli" {meta.mainProgram = "temporal";};
    };
in
  pkgs
