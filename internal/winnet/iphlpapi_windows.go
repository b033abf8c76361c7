package winnet

import (
	"unsafe"

	"golang.org/x/sys/windows"
)

// The IP Helper calls x/sys/windows does not bind. All of them return a
// Win32 error code (NETIO_STATUS), except the Initialize* ones, which
// return nothing.
var (
	iphlpapi                            = windows.NewLazySystemDLL("iphlpapi.dll")
	procInitializeUnicastIpAddressEntry = iphlpapi.NewProc("InitializeUnicastIpAddressEntry")
	procCreateUnicastIpAddressEntry     = iphlpapi.NewProc("CreateUnicastIpAddressEntry")
	procDeleteUnicastIpAddressEntry     = iphlpapi.NewProc("DeleteUnicastIpAddressEntry")
	procInitializeIpForwardEntry        = iphlpapi.NewProc("InitializeIpForwardEntry")
	procCreateIpForwardEntry2           = iphlpapi.NewProc("CreateIpForwardEntry2")
	procDeleteIpForwardEntry2           = iphlpapi.NewProc("DeleteIpForwardEntry2")
	procSetIpInterfaceEntry             = iphlpapi.NewProc("SetIpInterfaceEntry")
	procSetIfEntry                      = iphlpapi.NewProc("SetIfEntry")
)

// call invokes a proc that returns a Win32 error code.
func call(p *windows.LazyProc, arg unsafe.Pointer) error {
	if err := p.Find(); err != nil {
		return err
	}
	r, _, _ := p.Call(uintptr(arg))
	if r != 0 {
		return windows.Errno(r)
	}
	return nil
}

// initialize invokes one of the void Initialize* procs.
func initialize(p *windows.LazyProc, arg unsafe.Pointer) error {
	if err := p.Find(); err != nil {
		return err
	}
	p.Call(uintptr(arg))
	return nil
}

func initializeUnicastIpAddressEntry(row *windows.MibUnicastIpAddressRow) error {
	return initialize(procInitializeUnicastIpAddressEntry, unsafe.Pointer(row))
}

func createUnicastIpAddressEntry(row *windows.MibUnicastIpAddressRow) error {
	return call(procCreateUnicastIpAddressEntry, unsafe.Pointer(row))
}

func deleteUnicastIpAddressEntry(row *windows.MibUnicastIpAddressRow) error {
	return call(procDeleteUnicastIpAddressEntry, unsafe.Pointer(row))
}

func initializeIpForwardEntry(row *windows.MibIpForwardRow2) error {
	return initialize(procInitializeIpForwardEntry, unsafe.Pointer(row))
}

func createIpForwardEntry2(row *windows.MibIpForwardRow2) error {
	return call(procCreateIpForwardEntry2, unsafe.Pointer(row))
}

func deleteIpForwardEntry2(row *windows.MibIpForwardRow2) error {
	return call(procDeleteIpForwardEntry2, unsafe.Pointer(row))
}

func setIpInterfaceEntry(row *windows.MibIpInterfaceRow) error {
	return call(procSetIpInterfaceEntry, unsafe.Pointer(row))
}

func setIfEntry(row *windows.MibIfRow) error {
	return call(procSetIfEntry, unsafe.Pointer(row))
}
