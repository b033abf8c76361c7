package engine

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// layers places every file of the package in one layer (see the package
// doc): a file may call into its own layer and the ones below, never above.
// A new file must be placed here, which is the point: its author decides
// where it belongs.
var layers = map[string]int{
	// 0: desired state and the package's plumbing, memory only.
	"state.go": 0, "names.go": 0, "validate.go": 0, "locks.go": 0, "deps.go": 0,
	// 1: the device applier.
	"device.go": 1, "reading.go": 1,
	// 2: the domains, one request's steps each.
	"global.go": 2, "nodekey.go": 2, "service.go": 2, "attach.go": 2, "guest.go": 2, "windows.go": 2,
	"peers.go": 2, "alloc.go": 2, "dnsint.go": 2, "fwint.go": 2, "natint.go": 2, "hooks.go": 2, "observe.go": 2, "takeover.go": 2,
	"backup.go": 2, "netns.go": 2,
	// 3: dispatch and the background passes.
	"engine.go": 3, "reconcile.go": 3, "monitor.go": 3, "status.go": 3, "listing.go": 3,
}

var layerNames = []string{"desired state", "device applier", "domains", "dispatch and passes"}

// TestFilesCallOnlyDown checks the layering: no call from a file to a
// function or Engine method defined in a file of a higher layer.
func TestFilesCallOnlyDown(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	parsed := map[string]*ast.File{}
	definedIn := map[string]string{} // "Engine.name" or "name" -> file
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") || skipsLinux(name) {
			continue
		}
		if _, ok := layers[name]; !ok {
			t.Errorf("%s is in no layer: add it to layers in layers_test.go", name)
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		parsed[name] = f
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok {
				continue
			}
			definedIn[funcKey(fd)] = name
		}
	}
	var bad []string
	for name, f := range parsed {
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			var key string
			switch fn := call.Fun.(type) {
			case *ast.Ident:
				key = fn.Name
			case *ast.SelectorExpr:
				if x, ok := fn.X.(*ast.Ident); ok && x.Name == "e" {
					key = "Engine." + fn.Sel.Name
				}
			}
			if to, ok := definedIn[key]; ok && layers[to] > layers[name] {
				bad = append(bad, name+" ("+layerNames[layers[name]]+") calls "+key+" in "+to+" ("+layerNames[layers[to]]+") at "+fset.Position(call.Pos()).String())
			}
			return true
		})
	}
	sort.Strings(bad)
	for _, b := range bad {
		t.Error(b)
	}
}

func funcKey(fd *ast.FuncDecl) string {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return fd.Name.Name
	}
	typ := fd.Recv.List[0].Type
	if star, ok := typ.(*ast.StarExpr); ok {
		typ = star.X
	}
	if id, ok := typ.(*ast.Ident); ok && id.Name == "Engine" {
		return "Engine." + fd.Name.Name
	}
	return ""
}

// skipsLinux reports files built only for other platforms (none today,
// but a _windows.go file would be placed like its Linux sibling).
func skipsLinux(name string) bool {
	for _, suffix := range []string{"_windows.go", "_darwin.go", "_unix.go"} {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	_, err := os.Stat(name)
	return err != nil
}
