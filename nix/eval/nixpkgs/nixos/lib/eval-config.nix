# Stand-in for nixpkgs' nixos/lib/eval-config.nix, as microvm.nix's host options call it to
# evaluate each VM's `config` (`import "${vm.nixpkgs}/nixos/lib/eval-config.nix"`). Evaluates
# the guest over the harness's stand-ins; microvm.nix's own guest module directory is replaced
# by its real options.nix and asserts.nix plus the runner stand-in (nix/eval/lib.nix).
{
  modules ? [],
  extraModules ? [],
  specialArgs ? {},
  prefix ? [],
  pkgs,
  system ? pkgs.system,
  ...
}: let
  microvmDir = toString pkgs.standIn.microvmSrc + "/nixos-modules/microvm";
  replace = m:
    if (builtins.isPath m || builtins.isString m) && toString m == microvmDir
    then pkgs.standIn.guestModule
    else m;
in
  pkgs.standIn.evalNixos {
    modules = map replace (modules ++ extraModules);
    inherit specialArgs prefix system;
  }
