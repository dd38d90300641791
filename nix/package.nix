# The credproxy binary, built from the workspace's Cargo.lock (no network at build time).
{
  lib,
  rustPlatform,
  protobuf,
  curl,
  cacert,
  openbao,
  temporal-cli,
  # Integration tests that start real servers on loopback (curl, OpenBao, Temporal) run in the
  # sandbox too; tests that need the Internet or npm packages are left to CI. Override with
  # `credproxy.override { checkTargets = [ ... ]; }`.
  checkTargets ? ["--lib" "--bins" "--test" "cli" "--test" "proxy"],
}: let
  root = ../.;
  # Only what the build reads: a change to other docs, modules or scripts does not rebuild it.
  # The crates include docs/policy-input.schema.json and docs/reasons.md (include_str!);
  # nix/eval/run checks that every file the Rust code includes is in this source.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/crates")
      (root + "/docs/policy-input.schema.json")
      (root + "/docs/reasons.md")
      (lib.fileset.maybeMissing (root + "/testsupport"))
      (lib.fileset.maybeMissing (root + "/policy"))
    ];
  };
  manifest = lib.importTOML (root + "/Cargo.toml");
in
  rustPlatform.buildRustPackage {
    pname = "credproxy";
    version = manifest.workspace.package.version;
    inherit src;

    cargoLock.lockFile = root + "/Cargo.lock";

    cargoBuildFlags = ["--package" "credproxy-cli"];

    # The Temporal SDK's protos need protoc and the well-known types.
    nativeBuildInputs = [protobuf];
    PROTOC = lib.getExe' protobuf "protoc";

    doCheck = true;
    cargoTestFlags = ["--workspace"] ++ checkTargets;
    nativeCheckInputs = [curl openbao temporal-cli];
    preCheck = ''
      export SSL_CERT_FILE=${cacert}/etc/ssl/certs/ca-bundle.crt
      export HOME=$TMPDIR
    '';

    meta = {
      description = "Credential-injecting MITM egress proxy that lets AI agents use API credentials without seeing them";
      homepage = manifest.workspace.package.repository;
      license = with lib.licenses; [mit asl20];
      mainProgram = "credproxy";
      platforms = lib.platforms.linux;
    };
  }
