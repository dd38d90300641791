# NixOS tests (pkgs.testers.runNixOSTest) and the pure ruleset check. Run one with
#   nix build .#checks.x86_64-linux.credproxy-service -L
{
  pkgs,
  self,
}: let
  inherit (pkgs) lib;
  cplib = import ../lib.nix {inherit lib;};
  args = {inherit pkgs self cplib;};
in {
  # (c, pure) The lockdown ruleset for a fixed pair of VMs, as a string, against the golden
  # file. A change to the rules shows up here as a diff to review.
  nftables-ruleset-string =
    pkgs.runCommand "openclaw-vm-nftables-ruleset" {
      generated = cplib.nftRuleset (import ./nftables-vms.nix);
      passAsFile = ["generated"];
    } ''
      diff -u ${./nftables-expected.nft} "$generatedPath"
      touch $out
    '';

  credproxy-service = pkgs.testers.runNixOSTest (import ./credproxy-service.nix args);
  credproxy-two-node = pkgs.testers.runNixOSTest (import ./two-node.nix args);
  nftables = pkgs.testers.runNixOSTest (import ./nftables.nix args);
}
